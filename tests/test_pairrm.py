"""reward.source=pairwise against the SPPO authors' pipeline, recomputed here from its formulas:
uclaml/SPPO scripts/rank.py (apply_template, Blender.rank) and scripts/compute_prob.py
(from_ranks), llm-blender's CrossCompareCollator and CrossCompareReranker (pair_ranker/
collator.py, ranker.py) and get_scores_from_cmps (gpt_eval/utils.py), the PairRM-hf model card's
tokenize_pair, and transformers 4's DeBERTa-v2 fast tokenizer (convert_slow_tokenizer.py
DebertaV2Converter, the authors' transformers 4.42.4). One tiny random PairRM in both checkpoint
layouts, its tokenizer a sentencepiece model trained here."""

from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
import pytest
import torch

from sppo_megatron.config.schema import RewardConfig
from sppo_megatron.errors import ConfigError
from sppo_megatron.reward.oracles import build_oracle
from sppo_megatron.reward.oracles.pairrm_model import PREFIXES, DebertaV2PairRM
from sppo_megatron.reward.oracles.pairwise import PromptText
from sppo_megatron.reward.oracles.spm_tokenizer import load_spm_tokenizer
from sppo_megatron.testing.oracle_models import make_pairrm, write_blender_layout

#: strings transformers 5's DeBERTa-v2 normaliser reads differently from the sentencepiece model's
PROBES = [
    "hello world",
    "hello\u00a0world",
    "\u00a0hello",
    "hello\u3000world",
    "\u3000hello",
    "hel\u200blo",
    "\u200bhello",
    "hello\u200b",
    "zero\u200djoiner",
    "\ufeffhello",
    "Ａｂｃ　１２３",
    "ﬁne ﬁle",
    "wait...",
    "wait…",
    "brand™",
    "½ cup",
    "x² and x₂",
    "a\u0007b",
    "tab\there",
    "new\nline",
    "red\r\nblue",
    "  spaced   out  ",
    "café",
    "cafe\u0301",
    "hello\u00ad",
    "\u2028x",
    "a\u2003b",
    "中文 日本語",
    "«quote» “double”",
    "",
    "\u200b",
]
#: transformers 4 strips whitespace before the charsmap turns a zero-width character into a space,
#: so a trailing one becomes a "▁" piece where sentencepiece itself drops it
TRAILING_ZERO_WIDTH = {"hello\u200b", "\u200b"}

MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
)
LLAMA3_TEMPLATE = (
    "{% for message in messages %}{% set content = '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

LONG = " ".join(["the quick brown fox jumps over the lazy dog"] * 12)
PROMPTS = [
    "what is 2 + 3 ?",
    "name a color\u00a0please\u3000now ﬁne…",
    f"[SEP] say hello [SEP] world {LONG}",
    "Ａｂｃ x² ½ brand™ wait... a\u0007b tab\there\u200b",
]
RESPONSES = [
    "5",
    "it is 6 [SEP] or 7",
    "five\u200b",
    "2 + 3 = 5 .",
    f"red {LONG}",
    "ﬁne, thanks\u00a0!",
    "",
    "中文 日本語 «quote»",
    "[SEP]",
    "blue\u3000green … ½",
]


def template_dir(root, template: str) -> str:
    from sppo_megatron.testing.tiny import char_tokenizer

    tok = char_tokenizer()
    tok.add_special_tokens({"bos_token": "<s>"})
    tok.chat_template = template
    path = os.path.join(str(root), "template")
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairrm")
    hf = make_pairrm(root / "hf")
    return {
        "pairrm-hf": hf,
        "llm-blender": write_blender_layout(hf, root / "blender"),
        "llm-blender+tokenizer": write_blender_layout(
            hf, root / "blender_tok", "config.json", "model.safetensors", True
        ),
        "template": template_dir(root, MISTRAL_TEMPLATE),
    }


def reward_cfg(path: str, **kw) -> RewardConfig:
    return RewardConfig(
        **{"source": "pairwise", "model_path": path, "batch_size": 4, "max_length": 128, "dtype": "fp32", **kw}
    )


# ---- the reference: the authors' pipeline, from its formulas --------------------------------------


def reference_tokenizer(spm_model: str, max_length: int):
    """transformers 4.42.4's DebertaV2TokenizerFast of a sentencepiece model (DebertaV2Converter:
    Unigram over the model's pieces, Strip + Precompiled(charsmap) + Replace(" {2,}", " "),
    Metaspace prepending "▁", [CLS] $A [SEP]; [MASK] after the pieces), then llm-blender's
    add_tokens of the prefixes (CrossCompareCollator.__init__); encode(..., truncation=True) at
    max_length."""
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import AddedToken, Regex, Tokenizer, models, normalizers, pre_tokenizers, processors

    proto = sentencepiece_model_pb2.ModelProto()
    with open(spm_model, "rb") as fh:
        proto.ParseFromString(fh.read())
    tok = Tokenizer(models.Unigram([(p.piece, p.score) for p in proto.pieces], proto.trainer_spec.unk_id, False))
    tok.normalizer = normalizers.Sequence(
        [
            normalizers.Strip(),
            normalizers.Precompiled(proto.normalizer_spec.precompiled_charsmap),
            normalizers.Replace(Regex(" {2,}"), " "),
        ]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")])
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", special_tokens=[("[CLS]", 1), ("[SEP]", 2)]
    )
    tok.add_special_tokens(
        [AddedToken(t, normalized=False, special=True) for t in ("[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]")]
    )
    tok.add_tokens([AddedToken(t, normalized=True) for t in PREFIXES])
    tok.enable_truncation(max_length)
    return tok


def encode(tok, text: str, max_length: int):
    tok.enable_truncation(max_length)
    return tok.encode(text).ids


def apply_template(template_tokenizer, text: str) -> str:
    """uclaml/SPPO scripts/rank.py apply_template."""
    return template_tokenizer.apply_chat_template(
        [{"role": "user", "content": text}, {"role": "assistant", "content": "None"}], tokenize=False
    ).split("None")[0]


def blender_pairs(tok, source: str, candidates, source_max: int, candidate_max: int):
    """llm-blender: CrossCompareCollator.__call__ for one prompt (Blender.rank batch_size=1; DeBERTa
    encodes "[SEP]" as 3 ids, so the branch without mannually_add_sep_token), then
    CrossCompareReranker._full_predict / _forward's inputs for every ordered pair: <|candidate|>
    swapped for <|candidate1|> / <|candidate2|>, [source; cand1; cand2] with the padding trimmed."""
    assert len(encode(tok, "[SEP]", 10**6)) != 1
    sep = "[SEP]"
    src = encode(tok, ("<|source|>" + source).replace(sep, " "), source_max)
    remaining = source_max - len(src)
    cands = [encode(tok, ("<|candidate|>" + c).replace(sep, " "), candidate_max + remaining // 2) for c in candidates]
    cand, cand1, cand2 = (tok.token_to_id(p) for p in ("<|candidate|>", "<|candidate1|>", "<|candidate2|>"))
    pairs = {}
    for i, a in enumerate(cands):
        for j, b in enumerate(cands):
            if i != j:
                pairs[i, j] = src + [cand1 if t == cand else t for t in a] + [cand2 if t == cand else t for t in b]
    return pairs


def card_pairs(tok, source: str, candidates, source_max: int, candidate_max: int):
    """The PairRM-hf model card's tokenize_pair for every ordered pair."""
    src = encode(tok, "<|source|>" + source, source_max)
    budget = (source_max + 2 * candidate_max - len(src)) // 2
    return {
        (i, j): src + encode(tok, "<|candidate1|>" + a, budget) + encode(tok, "<|candidate2|>" + b, budget)
        for i, a in enumerate(candidates)
        for j, b in enumerate(candidates)
        if i != j
    }


def reference_logit(model, ids) -> float:
    """CrossCompareReranker._forward (= DebertaV2PairRM.forward) by hand, one unpadded row."""
    c = model.config
    ids = torch.tensor([ids])
    with torch.no_grad():
        h = model.pretrained_model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0]
        at = lambda t: h[(ids[0] == t).nonzero()[0, 0]]  # noqa: E731
        left = model.head_layer(torch.cat([at(c.source_prefix_id), at(c.cand1_prefix_id)]))
        right = model.head_layer(torch.cat([at(c.source_prefix_id), at(c.cand2_prefix_id)]))
    return float((left - right).mean())


def reference_probabilities(logits: np.ndarray, mode: str) -> np.ndarray:
    """sppo: get_scores_from_cmps (float32, as llm-blender), then compute_prob.py from_ranks;
    pair: sigmoid((l_ij - l_ji) / 2)."""
    if mode == "pair":
        return 1 / (1 + np.exp(-(logits - logits.T) / 2))
    scores = (logits.astype(np.float32) - logits.astype(np.float32).T).mean(axis=-1)
    k = len(scores)
    prb = np.zeros((k, k))
    for i in range(k):
        for j in range(k):
            prb[i][j] = 1 / (1 + np.exp(scores[j] - scores[i]))
    return prb


def reference(models, layout: str, prompts, groups, max_length: int, mode: str = "sppo"):
    """Per group: (P, {(i, j): token ids}) of the authors' pipeline."""
    from transformers import AutoTokenizer

    hf = models["pairrm-hf"]
    model = DebertaV2PairRM.from_pretrained(hf).eval()
    tok = reference_tokenizer(os.path.join(hf, "spm.model"), max_length)
    template = AutoTokenizer.from_pretrained(models["template"])
    candidate_max = int(max_length * 412 / 2048)
    source_max = max_length - 2 * candidate_max
    build = blender_pairs if layout.startswith("llm-blender") else card_pairs
    out = []
    for prompt, candidates in zip(prompts, groups):
        pairs = build(tok, apply_template(template, prompt), candidates, source_max, candidate_max)
        k = len(candidates)
        logits = np.zeros((k, k), dtype=np.float32)
        for (i, j), ids in pairs.items():
            logits[i, j] = reference_logit(model, ids)
        out.append((reference_probabilities(logits, mode), pairs))
    return out


def score(models, layout: str, prompts, groups, max_length: int = 128, **kw):
    """(rows of P, stats, the token ids of every forward in unit order) from the oracle."""
    oracle = build_oracle(
        reward_cfg(models[layout], max_length=max_length, pairwise_prompt_template=models["template"], **kw), "matrix"
    )
    seen = []
    logits = oracle.logits
    oracle.logits = lambda rows: seen.extend(rows) or logits(rows)
    messages = [[{"role": "user", "content": p}] for p, g in zip(prompts, groups) for _ in g]
    rows, stats = oracle.score_groups(messages, [r for g in groups for r in g], len(groups[0]))
    return rows, stats, seen


# ---- the acceptance: P and token ids equal the reference ------------------------------------------


@pytest.mark.parametrize("layout", ["pairrm-hf", "llm-blender", "llm-blender+tokenizer"])
@pytest.mark.parametrize("k", [2, 3, 5])
def test_preferences_and_token_ids_equal_the_authors_pipeline(models, layout, k):
    groups = [[RESPONSES[(g * k + i) % len(RESPONSES)] for i in range(k)] for g in range(len(PROMPTS))]
    rows, stats, seen = score(models, layout, PROMPTS, groups)
    want = reference(models, layout, PROMPTS, groups, 128)
    units = iter(seen)
    for g, (p, pairs) in enumerate(want):
        got = np.array(rows[g * k : (g + 1) * k])
        assert np.abs(got - p).max() <= 1e-5, (layout, k, g)
        for i in range(k):
            for j in range(k):
                if i != j:
                    assert next(units) == pairs[i, j], (layout, k, g, i, j)
    assert stats.oracle == {"reward/pairrm_prefix_frac": 0.0}
    spread = max(abs(x - 0.5) for row in rows for x in row)
    assert spread > 0.1  # preferences that depend on the texts, not a flat 1/2


def test_long_prompts_and_responses_are_cut_as_the_reference_cuts_them(models):
    prompts, groups = [PROMPTS[2]], [[RESPONSES[4], RESPONSES[1], LONG + " [SEP] " + LONG]]
    for layout in ("pairrm-hf", "llm-blender"):
        rows, _, seen = score(models, layout, prompts, groups, max_length=64)
        ((p, pairs),) = reference(models, layout, prompts, groups, 64)
        assert max(len(ids) for ids in seen) == 64 and seen == [
            pairs[i, j] for i in range(3) for j in range(3) if i != j
        ]
        assert np.abs(np.array(rows) - p).max() <= 1e-5


def test_the_per_pair_sigmoid_is_an_explicit_option(models):
    groups = [RESPONSES[:3], RESPONSES[3:6]]
    rows, _, _ = score(models, "llm-blender", PROMPTS[:2], groups, pairwise_prob="pair")
    sppo, _, _ = score(models, "llm-blender", PROMPTS[:2], groups)
    for g, (p, _) in enumerate(reference(models, "llm-blender", PROMPTS[:2], groups, 128, mode="pair")):
        assert np.abs(np.array(rows[g * 3 : (g + 1) * 3]) - p).max() <= 1e-5
    assert np.abs(np.array(rows) - np.array(sppo)).max() > 0.01  # the two formulas differ


def test_literal_sep_follows_each_layouts_reference(models):
    """llm-blender turns a literal [SEP] into a space, the model card keeps the special token."""
    groups = [["[SEP]", "a [SEP] b"]]
    _, _, blender = score(models, "llm-blender", ["x [SEP] y"], groups)
    _, _, card = score(models, "pairrm-hf", ["x [SEP] y"], groups)
    sep = 2
    assert [row.count(sep) for row in blender] == [3, 3]  # the three parts' own [SEP] only
    assert [row.count(sep) for row in card] == [3 + 1 + 1 + 1, 3 + 1 + 1 + 1]


def test_prefix_tokens_in_texts_are_neutralised_and_counted(models):
    """Both references abort on them; they become spaces, as llm-blender's [SEP]."""
    odd = ["a <|candidate1|> b", "c<|source|>d", "e ＜｜source｜＞ f"]  # the last normalises onto the prefix
    plain = ["a b", "c d", "e f"]
    for layout in ("pairrm-hf", "llm-blender"):
        rows, stats, seen = score(models, layout, ["what is 2 + 3 ?", "x <|candidate2|> y"], [odd, plain])
        want_rows, _, want_ids = score(models, layout, ["what is 2 + 3 ?", "x y"], [plain, plain])
        assert seen == want_ids and rows == want_rows
        assert stats.oracle["reward/pairrm_prefix_frac"] == 1.0  # all of group 1 and, by its prompt, group 2
    _, stats, _ = score(models, "pairrm-hf", ["q", "q"], [[odd[0], "x", "y"], ["x", "y", "z"]])
    assert stats.oracle["reward/pairrm_prefix_frac"] == pytest.approx(1 / 6)


# ---- the tokenizer ---------------------------------------------------------------------------------


def test_tokenizer_ids_equal_the_sentencepiece_models_own(models):
    import sentencepiece
    from transformers import AutoTokenizer

    hf = models["pairrm-hf"]
    spm_model = os.path.join(hf, "spm.model")
    sp = sentencepiece.SentencePieceProcessor(model_file=spm_model)
    ref = reference_tokenizer(spm_model, 10**6)
    restored = load_spm_tokenizer(hf)
    plain = AutoTokenizer.from_pretrained(hf)  # transformers 5's own normaliser
    ids = {s: restored.encode(s, add_special_tokens=False) for s in PROBES}
    assert ids == {s: ref.encode(s, add_special_tokens=False).ids for s in PROBES}
    assert {s for s in PROBES if ids[s] != sp.encode(s)} == TRAILING_ZERO_WIDTH
    differ = [s for s in PROBES if plain.encode(s, add_special_tokens=False) != ids[s]]
    assert len(differ) >= 15, differ  # what the restored normaliser fixes


def test_a_tokenizer_json_with_the_charsmap_is_taken_as_it_is(models, tmp_path):
    """PairRM-hf as transformers 4 saved it: tokenizer.json (its normaliser holds the charsmap),
    no spm.model."""
    hf = tmp_path / "hf_json"
    shutil.copytree(models["pairrm-hf"], hf)
    ref = reference_tokenizer(str(hf / "spm.model"), 10**6)
    ref.no_truncation()
    ref.save(str(hf / "tokenizer.json"))
    (hf / "spm.model").unlink()
    tok = load_spm_tokenizer(str(hf))
    assert [tok.encode(s) for s in PROBES] == [ref.encode(s).ids for s in PROBES]
    rows, _ = build_oracle(reward_cfg(str(hf), pairwise_prompt_template=None), "matrix").score_groups(
        [[{"role": "user", "content": "q"}]] * 3, RESPONSES[:3], 3
    )
    want, _ = build_oracle(reward_cfg(models["pairrm-hf"], pairwise_prompt_template=None), "matrix").score_groups(
        [[{"role": "user", "content": "q"}]] * 3, RESPONSES[:3], 3
    )
    assert rows == want


def test_a_tokenizer_without_the_charsmap_is_refused(models, tmp_path):
    """transformers 5's save_pretrained writes tokenizer.json with its own NFC normaliser and no
    spm.model: the charsmap is gone, and so is what PairRM was trained on."""
    from transformers import AutoTokenizer

    hf = tmp_path / "hf_t5"
    shutil.copytree(models["pairrm-hf"], hf)
    AutoTokenizer.from_pretrained(str(hf)).save_pretrained(str(hf))
    (hf / "spm.model").unlink()
    with pytest.raises(ConfigError, match="neither spm.model nor a tokenizer.json holding the sentencepiece charsmap"):
        build_oracle(reward_cfg(str(hf), pairwise_prompt_template=None), "matrix")


@pytest.mark.parametrize("module, package", [("sentencepiece", "sentencepiece"), ("google.protobuf", "protobuf")])
@pytest.mark.parametrize("layout", ["pairrm-hf", "llm-blender"])
def test_a_missing_tokenizer_dependency_is_one_line_naming_it(models, monkeypatch, module, package, layout):
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ConfigError) as info:
        build_oracle(reward_cfg(models[layout], pairwise_prompt_template=None), "matrix")
    text = str(info.value)
    assert "\n" not in text and f"needs the {package} package (pip install {package})" in text and "spm.model" in text


def test_a_tokenizer_that_is_not_the_checkpoints_is_refused(models, tmp_path):
    hf = tmp_path / "hf_other"
    shutil.copytree(models["pairrm-hf"], hf)
    config = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps({**config, "cand1_prefix_id": config["cand1_prefix_id"] + 1}))
    with pytest.raises(
        ConfigError, match=r"its tokenizer maps <\|candidate1\|> to \d+, its config.json cand1_prefix_id"
    ):
        build_oracle(reward_cfg(str(hf), pairwise_prompt_template=None), "matrix")


def test_max_length_too_short_for_pairrm_is_refused(models):
    with pytest.raises(ConfigError, match="reward.max_length=12 leaves PairRM 2 tokens per response"):
        build_oracle(reward_cfg(models["pairrm-hf"], max_length=12, pairwise_prompt_template=None), "matrix")


# ---- the prompt text -------------------------------------------------------------------------------


@pytest.mark.parametrize("template", [MISTRAL_TEMPLATE, LLAMA3_TEMPLATE])
def test_the_prompt_is_rendered_as_the_authors_rendered_it(tmp_path, template):
    from transformers import AutoTokenizer

    path = template_dir(tmp_path, template)
    text = PromptText(path)
    for prompt in PROMPTS:
        assert text([{"role": "user", "content": prompt}]) == apply_template(
            AutoTokenizer.from_pretrained(path), prompt
        )
    assert text([{"role": "user", "content": "  hi  "}]).endswith(
        ("[INST]   hi   [/INST]", "assistant<|end_header_id|>\n\n")
    )
    # the authors' split("None") cut a prompt at its own first None; the whole prompt is kept here
    assert "return None if empty" in text([{"role": "user", "content": "return None if empty"}])
    assert PromptText(None)([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]) == (
        "be brief\nhi"
    )


def test_the_ultrafeedback_recipe_keeps_the_authors_hyperparameters():
    """Each value against uclaml/SPPO (sources cited in examples/ultrafeedback-pairrm/README.md)."""
    from sppo_megatron.config import load_config

    cfg = load_config("examples/ultrafeedback-pairrm/config.yaml", [], world_size=8, check_paths=False)
    # scripts/generate.sh, generate.py: --pairs 5, T 0.7, top-p 0.9, --maxlen 2048
    assert (cfg.rollout.n, cfg.rollout.temperature, cfg.rollout.top_p, cfg.data.max_response_length) == (
        5,
        0.7,
        0.9,
        2048,
    )
    # scripts/rank.py, compute_prob.py: PairRM in fp16, rank scores -> P, the prompt in the policy's template
    assert (cfg.reward.source, cfg.reward.dtype, cfg.reward.pairwise_prob, cfg.reward.max_length) == (
        "pairwise",
        "fp16",
        "sppo",
        2048,
    )
    assert cfg.reward.pairwise_prompt_template == cfg.model.path
    # compute_prob.py prepare_score, sppo/trainer.py sppo_loss; scripts/pipeline.sh BETA=0.001
    assert (cfg.algorithm.preference, cfg.algorithm.include_self, cfg.algorithm.loss) == ("matrix", True, "pair")
    assert cfg.algorithm.eta == 1 / 0.001
    # pipeline.sh: LEARNING_RATE 5.0e-7, 8 per device x 8 GPUs x ACCUMULATE 1; run_sppo_mistral.sh --num 1
    assert (cfg.optim.lr, cfg.train.mini_batch_size, cfg.train.epochs_per_rollout) == (5.0e-7, 8 * 8 * 1, 1)
    assert (cfg.optim.weight_decay, cfg.optim.clip_grad, cfg.model.dtype) == (0.0, 1.0, "bf16")
