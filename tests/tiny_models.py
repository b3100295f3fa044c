"""Test-side helpers around the tiny models of `sppo_megatron.testing.tiny` (the one factory).

`tiny_models_root(tmp_path_factory)` builds every ARCHS model once per pytest session
(`moe_models_root` the MOE_ARCHS ones);
`peaky_qwen2(path)` is the small Qwen2 the rollout and weight-sync tests sample from;
`hf_state_dict` / `hf_logits` read a model directory back as the reference.
"""

from __future__ import annotations

import os
from typing import Dict

from sppo_megatron.testing.tiny import ARCHS, MOE_ARCHS, make_tiny_hf_model, tiny_config, tiny_model

PEAKY_EOS = 3


def tiny_models_root(tmp_path_factory, archs=ARCHS, name: str = "tiny_hf_models") -> str:
    """Build every `archs` model once per pytest session (shared by the test modules); return the root."""
    root = tmp_path_factory.getbasetemp() / name
    done = root / ".complete"
    if not done.exists():
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        for arch in archs:
            make_tiny_hf_model(arch, root / arch)
        done.write_text("ok")
    return str(root)


def moe_models_root(tmp_path_factory) -> str:
    """The MOE_ARCHS models, once per pytest session."""
    return tiny_models_root(tmp_path_factory, MOE_ARCHS, "tiny_moe_models")


def peaky_qwen2(path: str, tie: bool = True, seed: int = 0):
    """A tiny Qwen2 saved to `path` (no tokenizer), returned; init std 0.3: peaky logits, greedy has
    no near-ties and hits PEAKY_EOS."""
    config = tiny_config(
        "qwen2",
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        tie_word_embeddings=tie,
        initializer_range=0.3,
        eos_token_id=PEAKY_EOS,
        rope_theta=10000.0,
    )
    model = tiny_model(config, seed)
    model.save_pretrained(path)
    return model


def hf_state_dict(path: str) -> Dict[str, "object"]:
    """All tensors of an HF safetensors directory, by name (as saved)."""
    import json

    from safetensors.torch import load_file

    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    out = {}
    for name in files:
        out.update(load_file(os.path.join(path, name)))
    return out


def hf_logits(path: str, input_ids):
    """Reference logits of the HF model at `path` (fp32, eager attention)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    with torch.no_grad():
        return model(input_ids=input_ids).logits


def convert(argv):
    """`sppo-convert` in this process: main(argv) -> exit code (user errors' SystemExit included)."""
    from sppo_megatron.cli.convert import main

    try:
        return main(argv)
    except SystemExit as e:
        return e.code
