"""The one factory for tiny random Hugging Face models and their tokenizer, built offline (no hub).

It lives in the package, not in tests/, because tools/make_tiny_assets.py (the CPU demo's
assets) runs as a script from a checkout with the package installed, where `tests` is not
importable; the tests use the same functions, so the demo and the tests cannot drift apart.

* `char_tokenizer(chars)`: one token per character and per role marker, `<role>content` chat
  template; `<pad>` = PAD_ID, `<eos>` = EOS_ID (the ids `tiny_config` puts in the model config).
* `tiny_config(arch, **overrides)`: an HF config per supported architecture variant (ARCHS,
  and the mixture-of-experts MOE_ARCHS):
  hidden 64, 4 heads, 2 kv heads, vocab 100 (not a multiple of 128: the megatron side pads it),
  each variant with the rope / head_dim / tying / sliding-window quirk the bridge must map.
* `tiny_model(config, seed, random_norms)`: the model, seeded; `random_norms` makes every
  tensor random, norms included (around 1), so a wrong mapping cannot hide behind all-ones.
* `make_tiny_hf_model(arch, out_dir)`: a complete directory (sharded safetensors with index,
  generation_config.json, tokenizer), as the converters and the trainer read it.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    GenerationConfig,
    LlamaConfig,
    MistralConfig,
    MixtralConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2MoeConfig,
    Qwen3Config,
    Qwen3MoeConfig,
)

ARCHS = ("llama", "llama3.1", "llama3.2-tied", "qwen2", "qwen2-tied", "qwen3", "mistral")
#: mixture-of-experts variants (4 experts, top 2), kept apart: the dense suites loop over ARCHS
MOE_ARCHS = ("qwen3-moe", "qwen2-moe", "mixtral")
VOCAB = 100
SPECIAL_TOKENS = ("<pad>", "<eos>", "<user>", "<assistant>", "<system>")
PAD_ID, EOS_ID = SPECIAL_TOKENS.index("<pad>"), SPECIAL_TOKENS.index("<eos>")
TEXT_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789 +=?.\n"
CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def char_tokenizer(chars: str = TEXT_CHARS) -> Any:
    """A PreTrainedTokenizerFast: SPECIAL_TOKENS then one token per character of `chars` (others -> <pad>)."""
    vocab = {tok: i for i, tok in enumerate(list(SPECIAL_TOKENS) + list(chars))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")
    fast.add_special_tokens({"additional_special_tokens": ["<user>", "<assistant>", "<system>"]})
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_config(arch: str = "qwen2", **overrides: Any) -> Any:
    """The HF config of the tiny `arch` (see ARCHS); `overrides` (HF config keys) win over everything."""
    common = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=4 if arch == "llama" else 3,  # one even, the rest odd (uneven pipeline split)
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        tie_word_embeddings=arch.endswith("-tied"),
        bos_token_id=None,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )
    variants = {
        "llama": (LlamaConfig, dict(rope_theta=10000.0)),
        # non-default llama3 factors (megatron-core hard-codes 1 / 4 / 8192): scaling bites at short range
        "llama3.1": (
            LlamaConfig,
            dict(
                rope_theta=10000.0,
                head_dim=32,
                rope_scaling={
                    "rope_type": "llama3",
                    "factor": 4.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 2.0,
                    "original_max_position_embeddings": 32,
                },
            ),
        ),
        "llama3.2-tied": (
            LlamaConfig,
            dict(
                rope_theta=500000.0,
                max_position_embeddings=16384,
                rope_scaling={
                    "rope_type": "llama3",
                    "factor": 32.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 8192,
                },
            ),
        ),
        "qwen2": (Qwen2Config, dict(rope_theta=1000000.0, use_sliding_window=False)),
        "qwen2-tied": (Qwen2Config, dict(rope_theta=1000000.0, use_sliding_window=False)),
        "qwen3": (Qwen3Config, dict(rope_theta=1000000.0, head_dim=24)),
        "mistral": (MistralConfig, dict(rope_theta=10000.0, sliding_window=8)),
        # MoE: 4 experts, top 2; Qwen3-MoE renormalises the top-k weights, Qwen2-MoE does not and
        # has a shared expert and a dense layer (mlp_only_layers); Mixtral routes every layer
        "qwen3-moe": (
            Qwen3MoeConfig,
            dict(
                rope_theta=1000000.0,
                head_dim=24,
                num_experts=4,
                num_experts_per_tok=2,
                moe_intermediate_size=32,
                norm_topk_prob=True,
            ),
        ),
        "qwen2-moe": (
            Qwen2MoeConfig,
            dict(
                rope_theta=1000000.0,
                num_experts=4,
                num_experts_per_tok=2,
                moe_intermediate_size=32,
                shared_expert_intermediate_size=48,
                norm_topk_prob=False,
                mlp_only_layers=[1],
                use_sliding_window=False,
            ),
        ),
        "mixtral": (
            MixtralConfig,
            dict(
                rope_theta=1000000.0,
                num_local_experts=4,
                num_experts_per_tok=2,
                intermediate_size=32,
                sliding_window=None,
            ),
        ),
    }
    if arch not in variants:
        raise ValueError(f"unknown tiny arch {arch!r}; known: {ARCHS + MOE_ARCHS}")
    config_class, extra = variants[arch]
    return config_class(**{**common, **extra, **overrides})


def tiny_model(config: Any, seed: int = 0, random_norms: bool = False) -> Any:
    """An fp32 causal LM for `config`: HF's initialisation (std config.initializer_range) after
    torch.manual_seed(seed), or with random_norms every tensor redrawn (norms 1 + 0.1 N, others 0.08 N)."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if random_norms:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("norm.weight"):
                    p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
                else:
                    p.copy_(0.08 * torch.randn(p.shape, generator=gen))
    return model


def make_tiny_hf_model(arch: str, out_dir: Any, seed: int = 0, max_shard_size: str = "60KB", **overrides: Any) -> str:
    """Write the tiny random (random_norms) `arch` model with its tokenizer to out_dir; return the path."""
    out_dir = str(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    config = tiny_config(arch, **overrides)
    tiny_model(config, seed, random_norms=True).save_pretrained(out_dir, max_shard_size=max_shard_size)
    GenerationConfig(
        eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id, do_sample=True, temperature=0.7
    ).save_pretrained(out_dir)
    char_tokenizer().save_pretrained(out_dir)
    return out_dir
