"""Tiny random oracle models built on the fly (no hub): a Qwen2 reward model (one label), a
DeBERTa-v2 PairRM ranker with its prefix tokens, and a tiny causal LM judge."""

from __future__ import annotations

import os

import torch

from sppo_megatron.testing.tiny import EOS_ID, PAD_ID, VOCAB, char_tokenizer, make_tiny_hf_model


def _randomize(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_((1.0 if "norm" in name.lower() and name.endswith("weight") else 0.0)
                    + 0.08 * torch.randn(p.shape, generator=gen))


def make_reward_model(out_dir, num_labels: int = 1, seed: int = 0) -> str:
    from transformers import AutoModelForSequenceClassification, Qwen2Config

    config = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                         num_labels=num_labels, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
    model = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
    _randomize(model, seed)
    model.save_pretrained(str(out_dir))
    char_tokenizer().save_pretrained(str(out_dir))
    return str(out_dir)


def make_judge(out_dir) -> str:
    return make_tiny_hf_model("qwen2", out_dir, num_hidden_layers=2)


def make_pairrm(out_dir, seed: int = 0) -> str:
    """A DebertaV2PairRM in the llm-blender/PairRM-hf layout: config.json (architectures, prefix
    token ids, n_tasks, drop_out), safetensors, and a [CLS] ... [SEP] tokenizer with the prefixes."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import DebertaV2Config, PreTrainedTokenizerFast

    from sppo_megatron.reward.oracles.pairwise import CAND1_PREFIX, CAND2_PREFIX, SOURCE_PREFIX, DebertaV2PairRM

    specials = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]", SOURCE_PREFIX, CAND1_PREFIX, CAND2_PREFIX, "<|candidate|>"]
    words = [str(i) for i in range(10)] + list("abcdefghijklmnopqrstuvwxyz") + ["+", "-", "=", "?", "."]
    vocab = {t: i for i, t in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]",
                                   unk_token="[UNK]", mask_token="[MASK]",
                                   additional_special_tokens=[SOURCE_PREFIX, CAND1_PREFIX, CAND2_PREFIX])
    config = DebertaV2Config(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=48, max_position_embeddings=512, pad_token_id=0,
                             n_tasks=2, drop_out=0.05, sep_token_id=2, source_prefix_id=vocab[SOURCE_PREFIX],
                             cand_prefix_id=vocab["<|candidate|>"], cand1_prefix_id=vocab[CAND1_PREFIX],
                             cand2_prefix_id=vocab[CAND2_PREFIX], architectures=["DebertaV2PairRM"])
    torch.manual_seed(seed)
    model = DebertaV2PairRM(config)
    _randomize(model, seed)
    os.makedirs(str(out_dir), exist_ok=True)
    model.save_pretrained(str(out_dir))
    fast.save_pretrained(str(out_dir))
    return str(out_dir)
