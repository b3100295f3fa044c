"""SPPO (Self-Play Preference Optimization) post-training on megatron-core."""

__version__ = "0.1.0"
