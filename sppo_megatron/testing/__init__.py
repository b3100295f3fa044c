"""Fixtures shared by tests/ and tools/ (tiny models, a character tokenizer); the trainer never imports this."""
