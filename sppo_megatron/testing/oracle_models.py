"""Tiny random oracle models built on the fly (no hub): a Qwen2 reward model (one label), a
DeBERTa-v2 PairRM ranker with its prefix tokens (in PairRM-hf's layout, and rewritten in
llm-blender's own), a tiny causal LM judge; and a local HTTP scorer for reward.source=remote. Used by
the tests and tools/bench_oracles.py, so it lives in the package (tools never import tests)."""

from __future__ import annotations

import http.server
import json
import os
import threading
import time

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DebertaV2Config,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from sppo_megatron.reward.oracles.pairwise import CAND1_PREFIX, CAND2_PREFIX, SOURCE_PREFIX, DebertaV2PairRM
from sppo_megatron.testing.tiny import EOS_ID, PAD_ID, VOCAB, char_tokenizer, make_tiny_hf_model


def _randomize(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(
                (1.0 if "norm" in name.lower() and name.endswith("weight") else 0.0)
                + 0.08 * torch.randn(p.shape, generator=gen)
            )


def make_reward_model(out_dir, num_labels: int = 1, seed: int = 0) -> str:
    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        num_labels=num_labels,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )
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
    specials = [
        "[PAD]",
        "[CLS]",
        "[SEP]",
        "[UNK]",
        "[MASK]",
        SOURCE_PREFIX,
        CAND1_PREFIX,
        CAND2_PREFIX,
        "<|candidate|>",
    ]
    words = [str(i) for i in range(10)] + list("abcdefghijklmnopqrstuvwxyz") + ["+", "-", "=", "?", "."]
    vocab = {t: i for i, t in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 1), ("[SEP]", 2)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        unk_token="[UNK]",
        mask_token="[MASK]",
        additional_special_tokens=[SOURCE_PREFIX, CAND1_PREFIX, CAND2_PREFIX],
    )
    config = DebertaV2Config(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=512,
        pad_token_id=0,
        n_tasks=2,
        drop_out=0.05,
        sep_token_id=2,
        source_prefix_id=vocab[SOURCE_PREFIX],
        cand_prefix_id=vocab["<|candidate|>"],
        cand1_prefix_id=vocab[CAND1_PREFIX],
        cand2_prefix_id=vocab[CAND2_PREFIX],
        architectures=["DebertaV2PairRM"],
    )
    torch.manual_seed(seed)
    model = DebertaV2PairRM(config)
    _randomize(model, seed)
    os.makedirs(str(out_dir), exist_ok=True)
    model.save_pretrained(str(out_dir))
    fast.save_pretrained(str(out_dir))
    return str(out_dir)


def write_blender_layout(
    pairrm_hf_dir, out_dir, config_name: str = "ranker_config.json", weights: str = "pytorch_model.bin"
) -> str:
    """The weights of a PairRM-hf-layout directory rewritten in llm-blender's own layout
    (llm-blender/PairRM): a RankerConfig JSON (`config_name`, whose model_name is a DeBERTa-v2
    backbone directory with the vocabulary before llm-blender's resize), the CrossCompareReranker
    state dict (`pretrained_model.*`, `head_layer.*`, plus the position_ids buffer older
    transformers saved) as `weights`, and the tokenizer."""
    out_dir = str(out_dir)
    model = DebertaV2PairRM.from_pretrained(str(pairrm_hf_dir))
    c = model.config
    backbone = os.path.join(out_dir, "backbone")
    DebertaV2Config(
        vocab_size=c.vocab_size - 4,
        hidden_size=c.hidden_size,
        num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads,
        intermediate_size=c.intermediate_size,
        max_position_embeddings=c.max_position_embeddings,
        pad_token_id=c.pad_token_id,
    ).save_pretrained(backbone)
    ranker = {
        "ranker_type": "pairranker",
        "model_type": "deberta",
        "model_name": backbone,
        "cache_dir": None,
        "load_checkpoint": None,
        "source_maxlength": 1224,
        "candidate_maxlength": 412,
        "n_tasks": c.n_tasks,
        "num_pos": 5,
        "num_neg": 5,
        "sub_sampling_mode": "all_pair",
        "sub_sampling_ratio": 0.4,
        "loss_type": "instructgpt",
        "reduce_type": "linear",
        "inference_mode": "bubble",
        "drop_out": c.drop_out,
        "fp16": True,
        "device": None,
    }
    with open(os.path.join(out_dir, config_name), "w") as fh:
        json.dump(ranker, fh, indent=4)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if weights == "model.safetensors":
        from safetensors.torch import save_file

        save_file(state, os.path.join(out_dir, weights))
    else:
        state["pretrained_model.embeddings.position_ids"] = torch.arange(c.max_position_embeddings)[None]
        torch.save(state, os.path.join(out_dir, weights))
    AutoTokenizer.from_pretrained(str(pairrm_hf_dir)).save_pretrained(out_dir)
    return out_dir


def _longer_wins(responses):
    return [
        [0.5 if i == j else float(len(a) > len(b)) for j, b in enumerate(responses)] for i, a in enumerate(responses)
    ]


class ScoringServer:
    """A local reward.source=remote scorer on 127.0.0.1 whose behaviour the test picks: ok (scores =
    response lengths, matrices = longer wins), 500, malformed JSON, silence; `shutdown()` stops it."""

    def __init__(self):
        self.mode, self.requests = "ok", 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                outer.requests += 1
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if outer.mode == "silent":
                    time.sleep(2.0)
                    return
                if outer.mode == "500":
                    self.send_error(500, "boom")
                    return
                if outer.mode == "malformed":
                    payload = b"{not json"
                elif body["kind"] == "scores":
                    payload = json.dumps({"scores": [float(len(it["response"])) for it in body["items"]]}).encode()
                else:
                    payload = json.dumps({"matrices": [_longer_wins(g["responses"]) for g in body["groups"]]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/score"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def shutdown(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
