"""Tiny random oracle models built on the fly (no hub): a Qwen2 reward model (one label), a
DeBERTa-v2 PairRM ranker with a sentencepiece tokenizer and its prefix tokens (in PairRM-hf's
layout, and rewritten in llm-blender's own), a tiny causal LM judge; and a local HTTP scorer for
reward.source=remote. Used by the tests and tools/bench_oracles.py, so it lives in the package
(tools never import tests)."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import threading
import time

import sentencepiece
import torch
from transformers import AutoModelForSequenceClassification, DebertaV2Config, Qwen2Config

from sppo_megatron.reward.oracles.pairrm_model import PREFIX_ID_KEYS, PREFIXES, DebertaV2PairRM
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


#: text the tiny sentencepiece model is trained on: words of the oracle tests, and the characters
#: whose normalisation (nmt_nfkc) tests/test_pairrm.py probes, so that they become pieces
SPM_CORPUS = [
    "what is 2 + 3 ? name a color . it is 6 five 2 + 3 = 5 . red blue a b c green .",
    "the quick brown fox jumps over the lazy dog and then some more words follow here",
    "hello world , how are you ? i am fine , thanks ! please say it again : yes / no ; (maybe) [sure] {ok}",
    "fine file office , wait ... tm 1/2 x2 cafe naive abc 123 -- ' \" < > | _ * # @ % & ^ ~ ` $",
    "café naïve über straße 中文 日本語 αβγ «quote» ‘single’ “double” — – é è ê à ç",
]


def make_spm_model(out_dir) -> str:
    """A tiny sentencepiece unigram model (nmt_nfkc, as DeBERTa-v3's) with DeBERTa-v3's special
    pieces [PAD] [CLS] [SEP] [UNK] at ids 0-3; returns the path of its spm.model."""

    os.makedirs(str(out_dir), exist_ok=True)
    path = os.path.join(str(out_dir), "spm.model")
    with open(path, "wb") as fh:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(SPM_CORPUS * 20),
            model_writer=fh,
            model_type="unigram",
            vocab_size=160,
            hard_vocab_limit=False,
            character_coverage=1.0,
            num_threads=1,
            pad_id=0,
            bos_id=1,
            eos_id=2,
            unk_id=3,
            pad_piece="[PAD]",
            bos_piece="[CLS]",
            eos_piece="[SEP]",
            unk_piece="[UNK]",
            minloglevel=2,
        )
    return path


def write_deberta_tokenizer(out_dir, spm_model: str, prefixes: bool) -> int:
    """A DeBERTa-v2 tokenizer as transformers 4 saved microsoft/deberta-v3-large's (`prefixes`
    False) or PairRM-hf's (True, the four prefix tokens added after [MASK]): spm.model and
    tokenizer_config.json, no tokenizer.json. Returns its length."""

    pieces = sentencepiece.SentencePieceProcessor(model_file=spm_model).get_piece_size()

    def added(content: str, special: bool) -> dict:
        return dict(
            content=content, lstrip=False, normalized=not special, rstrip=False, single_word=False, special=special
        )

    decoder = {str(i): added(t, True) for i, t in enumerate(["[PAD]", "[CLS]", "[SEP]", "[UNK]"])}
    decoder[str(pieces)] = added("[MASK]", True)
    if prefixes:
        decoder.update({str(pieces + 1 + i): added(t, False) for i, t in enumerate(PREFIXES)})
    os.makedirs(str(out_dir), exist_ok=True)
    if os.path.abspath(spm_model) != os.path.abspath(os.path.join(str(out_dir), "spm.model")):
        shutil.copy(spm_model, os.path.join(str(out_dir), "spm.model"))
    config = dict(
        added_tokens_decoder=decoder,
        bos_token="[CLS]",
        cls_token="[CLS]",
        eos_token="[SEP]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        unk_token="[UNK]",
        mask_token="[MASK]",
        do_lower_case=False,
        split_by_punct=False,
        vocab_type="spm",
        model_max_length=1000000000000000019884624838656,
        tokenizer_class="DebertaV2Tokenizer",
    )
    with open(os.path.join(str(out_dir), "tokenizer_config.json"), "w") as fh:
        json.dump(config, fh, indent=2)
    return pieces + 1 + (len(PREFIXES) if prefixes else 0)


#: PairRM's random weights x this per top-level module (on _randomize's 0.08)
SCALE = {"pretrained_model": 6.0, "head_layer": 12.0}


def make_pairrm(out_dir, seed: int = 0) -> str:
    """A DebertaV2PairRM in the llm-blender/PairRM-hf layout: config.json (architectures, prefix
    token ids, n_tasks, drop_out; DeBERTa-v3's relative attention), safetensors, and a DeBERTa-v2
    tokenizer given as a tiny sentencepiece model with the prefixes added."""
    out_dir = str(out_dir)
    vocab = write_deberta_tokenizer(out_dir, make_spm_model(out_dir), prefixes=True)
    config = DebertaV2Config(
        vocab_size=vocab,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=512,
        relative_attention=True,
        position_buckets=16,
        norm_rel_ebd="layer_norm",
        share_att_key=True,
        pos_att_type=["p2c", "c2p"],
        position_biased_input=False,
        type_vocab_size=0,
        pad_token_id=0,
        n_tasks=2,
        drop_out=0.05,
        sep_token_id=2,
        architectures=["DebertaV2PairRM"],
        **{key: vocab - 4 + i for i, key in enumerate(PREFIX_ID_KEYS)},
    )
    torch.manual_seed(seed)
    model = DebertaV2PairRM(config)
    _randomize(model, seed)
    with torch.no_grad():  # weights large enough that the candidates' text moves the logit by order 1
        for name, p in model.named_parameters():
            if "LayerNorm" not in name:
                p.mul_(SCALE.get(name.split(".")[0], 1.0))
    model.save_pretrained(out_dir)
    return out_dir


def write_blender_layout(
    pairrm_hf_dir,
    out_dir,
    config_name: str = "ranker_config.json",
    weights: str = "pytorch_model.bin",
    with_tokenizer: bool = False,
) -> str:
    """The weights of a PairRM-hf-layout directory rewritten in llm-blender's own layout
    (llm-blender/PairRM): a RankerConfig JSON (`config_name`) whose model_name is a DeBERTa-v2
    backbone directory with the tokenizer before llm-blender's add_tokens (spm.model only, as
    microsoft/deberta-v3-large), the CrossCompareReranker state dict (`pretrained_model.*`,
    `head_layer.*`, plus the position_ids buffer older transformers saved) as `weights`, and
    (`with_tokenizer`) the PairRM-hf tokenizer beside them."""

    out_dir = str(out_dir)
    model = DebertaV2PairRM.from_pretrained(str(pairrm_hf_dir))
    c = model.config
    backbone = os.path.join(out_dir, "backbone")
    fields = (
        "hidden_size num_hidden_layers num_attention_heads intermediate_size max_position_embeddings relative_attention "
        "position_buckets norm_rel_ebd share_att_key pos_att_type position_biased_input type_vocab_size pad_token_id"
    )
    DebertaV2Config(vocab_size=c.vocab_size - 4, **{f: getattr(c, f) for f in fields.split()}).save_pretrained(backbone)
    write_deberta_tokenizer(backbone, os.path.join(str(pairrm_hf_dir), "spm.model"), prefixes=False)
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
    if with_tokenizer:
        for name in ("spm.model", "tokenizer_config.json"):
            shutil.copy(os.path.join(str(pairrm_hf_dir), name), os.path.join(out_dir, name))
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
