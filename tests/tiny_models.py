"""Tiny random Hugging Face models built on the fly (no hub): one per supported architecture variant.

`make_tiny_hf_model(arch, out_dir, tied=False, num_layers=3)` writes config.json,
generation_config.json, sharded safetensors (with index) and a tiny tokenizer
(`tokenizers` WordLevel wrapped in PreTrainedTokenizerFast, with a chat template) and
returns the directory. Every weight is random, norms included (around 1), so a wrong mapping
cannot hide behind all-ones tensors. hidden 64, 4 heads, 2 kv heads, vocab 100 (not a multiple
of 128: the megatron side pads it).
"""

from __future__ import annotations

import os
from typing import Dict, Optional

ARCHS = ("llama", "llama3.1", "llama3.2-tied", "qwen2", "qwen2-tied", "qwen3", "mistral")
VOCAB = 100
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def _config(arch: str, tied: bool, num_layers: int):
    from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    common = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        tie_word_embeddings=tied,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    if arch == "llama":
        return LlamaConfig(rope_theta=10000.0, **common)
    if arch == "llama3.1":
        # non-default llama3 factors (megatron-core hard-codes 1 / 4 / 8192): scaling bites at short range
        return LlamaConfig(
            rope_theta=10000.0,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 4.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 2.0,
                "original_max_position_embeddings": 32,
            },
            head_dim=32,
            **common,
        )
    if arch == "llama3.2-tied":
        common["tie_word_embeddings"] = True
        return LlamaConfig(
            rope_theta=500000.0,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 32.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
            **{**common, "max_position_embeddings": 16384},
        )
    if arch in ("qwen2", "qwen2-tied"):
        common["tie_word_embeddings"] = tied or arch == "qwen2-tied"
        return Qwen2Config(rope_theta=1000000.0, use_sliding_window=False, **common)
    if arch == "qwen3":
        return Qwen3Config(rope_theta=1000000.0, head_dim=24, **common)
    if arch == "mistral":
        return MistralConfig(rope_theta=10000.0, sliding_window=8, **common)
    raise ValueError(f"unknown tiny arch {arch!r}; known: {ARCHS}")


def make_tokenizer(out_dir: str) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
    words = [str(i) for i in range(10)] + list("abcdefghijklmnopqrstuvwxyz") + ["+", "-", "=", "?", "."]
    vocab = {t: i for i, t in enumerate(specials + words)}
    assert len(vocab) <= VOCAB
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)


def make_tiny_hf_model(
    arch: str,
    out_dir,
    tied: bool = False,
    num_layers: Optional[int] = None,
    seed: int = 0,
    max_shard_size: str = "60KB",
) -> str:
    """Write a tiny random HF model of `arch` (see ARCHS) to out_dir; return the path."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    if num_layers is None:
        num_layers = 4 if arch == "llama" else 3  # one even, the rest odd (uneven pipeline split)
    out_dir = str(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    config = _config(arch, tied, num_layers)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.08 * torch.randn(p.shape, generator=gen))
    model.save_pretrained(out_dir, max_shard_size=max_shard_size)
    GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0, do_sample=True, temperature=0.7).save_pretrained(out_dir)
    make_tokenizer(out_dir)
    return out_dir


def tiny_models_root(tmp_path_factory) -> str:
    """Build every ARCHS model once per pytest session (shared by the test modules); return the root."""
    root = tmp_path_factory.getbasetemp() / "tiny_hf_models"
    done = root / ".complete"
    if not done.exists():
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        for arch in ARCHS:
            make_tiny_hf_model(arch, root / arch)
        done.write_text("ok")
    return str(root)


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
