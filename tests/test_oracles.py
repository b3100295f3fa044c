"""Preference oracles (reward.source): each against a direct transformers forward of the same
inputs, the judge's order averaging, the remote scorer's failures, the config rules, and scoring
split across two real gloo ranks (PairRM against the authors' pipeline: tests/test_pairrm.py)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from sppo_megatron.algorithm.targets import compute_targets, sample_win_rates
from sppo_megatron.algorithm.winrate import matrix_win_rates
from sppo_megatron.config import load_config
from sppo_megatron.config.schema import AlgorithmConfig, RewardConfig
from sppo_megatron.errors import ConfigError, UserError
from sppo_megatron.reward.oracles import build_oracle, oracle_problems
from sppo_megatron.testing.oracle_models import (
    ScoringServer,
    make_judge,
    make_pairrm,
    make_reward_model,
    write_blender_layout,
)
from tests.multirank import run_ranks

PROMPTS = [[{"role": "user", "content": "what is 2 + 3 ?"}], [{"role": "user", "content": "name a color ."}]]
RESPONSES = ["5", "it is 6", "five", "2 + 3 = 5 .", "red", "blue", "a b c", "green ."]
MESSAGES = [PROMPTS[i // 4] for i in range(8)]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("oracles")
    return {
        "reward_model": make_reward_model(root / "rm"),
        "pairwise": make_pairrm(root / "pairrm"),
        "judge": make_judge(root / "judge"),
        "rm3": make_reward_model(root / "rm3", num_labels=3),
    }


def reward_cfg(**kw) -> RewardConfig:
    return RewardConfig(**{"batch_size": 3, "dtype": "fp32", "pairwise_prompt_template": None, **kw})


def test_reward_model_scores_equal_a_direct_forward(models):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    oracle = build_oracle(reward_cfg(source="reward_model", model_path=models["reward_model"]), "bradley_terry")
    scores, stats = oracle.score_groups(MESSAGES, RESPONSES, 4)
    model = AutoModelForSequenceClassification.from_pretrained(models["reward_model"]).eval()
    tok = AutoTokenizer.from_pretrained(models["reward_model"])
    for m, r, s in zip(MESSAGES, RESPONSES, scores):
        text = tok.apply_chat_template(m + [{"role": "assistant", "content": r}], tokenize=False)
        ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            assert abs(model(input_ids=ids).logits[0, 0].item() - s) <= 1e-5
    assert len(set(scores)) == len(scores)  # a real, input-dependent score
    expected = torch.tensor(scores, dtype=torch.float64)
    assert stats.oracle["reward/score_mean"] == pytest.approx(float(expected.mean()))
    assert stats.oracle["reward/score_std"] == pytest.approx(float(expected.std(unbiased=False)))


def test_llm_blender_layout_problems_are_one_line_each(models, tmp_path):
    blender = write_blender_layout(models["pairwise"], tmp_path / "blender")
    ranker_file = tmp_path / "blender" / "ranker_config.json"
    ranker = json.loads(ranker_file.read_text())
    ranker_file.write_text(json.dumps({**ranker, "ranker_type": "summareranker"}))
    assert oracle_problems(reward_cfg(source="pairwise", model_path=blender)) == [
        f"reward.model_path: {blender} is an llm-blender ranker of ranker_type 'summareranker', model_type 'deberta'; "
        "reward.source=pairwise loads ranker_type 'pairranker' on a 'deberta' model_type (PairRM)"
    ]
    ranker_file.write_text(json.dumps(ranker))
    (tmp_path / "blender" / "pytorch_model.bin").unlink()
    with pytest.raises(ConfigError, match="llm-blender layout.* has neither pytorch_model.bin nor model.safetensors"):
        build_oracle(reward_cfg(source="pairwise", model_path=blender), "matrix")


def test_judge_probabilities_are_order_averaged_and_match_a_direct_forward(models):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    oracle = build_oracle(
        reward_cfg(
            source="judge",
            model_path=models["judge"],
            judge_choices=["a", "b"],
            judge_template="{prompt} . {response_a} ? {response_b} = ",
        ),
        "matrix",
    )
    rows, _ = oracle.score_groups(MESSAGES, RESPONSES, 4)
    model = AutoModelForCausalLM.from_pretrained(models["judge"]).eval()
    tok = AutoTokenizer.from_pretrained(models["judge"])
    ids_ab = [tok.encode(w, add_special_tokens=False)[0] for w in ("a", "b")]

    def p_first(source, a, b):
        text = tok.apply_chat_template(
            [{"role": "user", "content": f"{source} . {a} ? {b} = "}], tokenize=False, add_generation_prompt=True
        )
        with torch.no_grad():
            logits = model(input_ids=tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]).logits[
                0, -1
            ]
        return float(torch.softmax(logits[ids_ab], dim=-1)[0])

    for g in range(2):
        source = PROMPTS[g][0]["content"]
        for i in range(4):
            for j in range(4):
                if i != j:
                    a, b = RESPONSES[g * 4 + i], RESPONSES[g * 4 + j]
                    want = (p_first(source, a, b) + 1 - p_first(source, b, a)) / 2
                    assert abs(rows[g * 4 + i][j] - want) <= 1e-5
                    assert abs(rows[g * 4 + i][j] + rows[g * 4 + j][i] - 1) <= 1e-9


def test_matrix_win_rates_follow_the_formula():
    torch.manual_seed(0)
    k = 4
    raw = torch.rand(2, k, k, dtype=torch.float64)
    prefs = raw / (raw + raw.transpose(1, 2))  # P + P^T = 1, diagonal 1/2
    rows = prefs.reshape(-1, k)
    for include_self in (False, True):
        got = matrix_win_rates(rows, k, include_self)
        for b in range(2):
            for i in range(k):
                others = [prefs[b, i, j] for j in range(k) if j != i]
                want = (sum(others) + 0.5) / k if include_self else sum(others) / (k - 1)
                assert abs(float(got[b * k + i]) - float(want)) <= 1e-12
        assert torch.allclose(got.reshape(2, k).mean(dim=1), torch.full((2,), 0.5, dtype=torch.float64))
    algo = AlgorithmConfig(preference="matrix", eta=2.0, loss="pair")
    targets, mask, metrics = compute_targets(rows, k, algo)
    p_hat = matrix_win_rates(rows, k)
    for b in range(2):
        chosen = mask[b * k : (b + 1) * k].nonzero().flatten().tolist()
        group = p_hat[b * k : (b + 1) * k]
        assert chosen == sorted([int(group.argmax()), int(group.argmin())])
        assert torch.allclose(targets[b * k : (b + 1) * k][chosen], 2.0 * (group[chosen] - 0.5))
    assert torch.equal(sample_win_rates(rows, k, algo), p_hat)


@pytest.fixture
def server():
    s = ScoringServer()
    yield s
    s.shutdown()


def test_remote_scores_and_matrices(server):
    scores, _ = build_oracle(reward_cfg(source="remote", url=server.url), "pairwise").score_groups(
        MESSAGES, RESPONSES, 4
    )
    assert scores == [float(len(r)) for r in RESPONSES]
    assert server.requests == 3  # batch_size 3: 8 samples in 3 requests
    rows, _ = build_oracle(reward_cfg(source="remote", url=server.url), "matrix").score_groups(MESSAGES, RESPONSES, 4)
    assert rows[0] == [0.5, 0.0, 0.0, 0.0] and rows[3] == [1.0, 1.0, 1.0, 0.5]


@pytest.mark.parametrize(
    "mode, timeout, message",
    [("500", 30, "HTTP status 500"), ("malformed", 30, "malformed JSON"), ("silent", 0.3, "no answer within 0.3s")],
)
def test_remote_failures_are_one_line_after_the_retries(server, mode, timeout, message):
    server.mode = mode
    oracle = build_oracle(
        reward_cfg(source="remote", url=server.url, retries=2, backoff_s=0.01, request_timeout_s=timeout), "pairwise"
    )
    with pytest.raises(UserError) as info:
        oracle.score_groups(MESSAGES[:2], RESPONSES[:2], 2)
    text = str(info.value)
    assert "\n" not in text and server.url in text and message in text and "after 3 attempts" in text
    assert server.requests == 3


def test_model_path_problems_are_one_line_each(models):
    assert oracle_problems(reward_cfg(source="reward_model", model_path=models["judge"])) == [
        f"reward.model_path: {models['judge']} is Qwen2ForCausalLM, not a sequence classifier (reward.source="
        "reward_model needs an AutoModelForSequenceClassification checkpoint with one label)"
    ]
    assert oracle_problems(reward_cfg(source="reward_model", model_path=models["rm3"])) == [
        f"reward.model_path: {models['rm3']} is a classifier with 3 labels; a reward model has exactly one (a scalar score)"
    ]
    assert (
        "not a PairRM checkpoint"
        in oracle_problems(reward_cfg(source="pairwise", model_path=models["reward_model"]))[0]
    )
    assert "not a causal LM" in oracle_problems(reward_cfg(source="judge", model_path=models["pairwise"]))[0]
    assert all(
        oracle_problems(reward_cfg(source=s, model_path=models[s])) == [] for s in ("reward_model", "pairwise", "judge")
    )
    with pytest.raises(ConfigError, match="3 labels"):
        build_oracle(reward_cfg(source="reward_model", model_path=models["rm3"]), "pairwise")


def config_problems(overrides):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides, world_size=1)
    return str(info.value).splitlines()


def test_config_rules_for_sources(run_files, models):
    valid = (
        "valid combinations: rule -> pairwise | bradley_terry | batch_softmean; reward_model -> pairwise | "
        "bradley_terry | batch_softmean; pairwise -> matrix; judge -> matrix; remote -> pairwise | bradley_terry "
        "| batch_softmean | matrix"
    )
    assert config_problems(run_files + ["reward.source=pairwise", f"reward.model_path={models['pairwise']}"]) == [
        f"algorithm.preference=pairwise does not fit reward.source=pairwise; {valid}"
    ]
    assert config_problems(run_files + ["algorithm.preference=matrix"]) == [
        f"algorithm.preference=matrix does not fit reward.source=rule; {valid}"
    ]
    assert "reward.source" in config_problems(run_files + ["reward.source=oracle"])[0]
    assert config_problems(run_files + ["reward.source=judge", "algorithm.preference=matrix"]) == [
        "reward.model_path: required for reward.source=judge (a Hugging Face model directory)"
    ]
    assert config_problems(run_files + ["reward.source=remote"]) == [
        "reward.url: required for reward.source=remote (an http:// or https:// endpoint)"
    ]
    assert config_problems(run_files + ["reward.source=remote", "reward.url=ftp://x", "reward.custom_fn=f.py:g"]) == [
        "reward.url=ftp://x: must start with http:// or https://",
        "reward.custom_fn: applies to reward.source=rule only (reward.source=remote)",
    ]
    cfg = load_config(
        None,
        run_files
        + [
            "reward.source=reward_model",
            f"reward.model_path={models['reward_model']}",
            "algorithm.preference=bradley_terry",
        ],
        world_size=1,
    )
    assert cfg.reward.source == "reward_model"


def test_preflight_rejects_a_multi_label_reward_model(run_files, models):
    from sppo_megatron.trainer.preflight import preflight

    cfg = load_config(
        None, run_files + ["reward.source=reward_model", f"reward.model_path={models['rm3']}"], world_size=1
    )
    with pytest.raises(ConfigError, match="classifier with 3 labels"):
        preflight(cfg)


def _score_on_two_ranks(path):
    import torch.distributed as dist

    dist.init_process_group("gloo")
    oracle = build_oracle(reward_cfg(source="pairwise", model_path=path, max_length=64), "matrix")
    seen = []
    compute = oracle.compute
    oracle.compute = lambda units: seen.append(len(units)) or compute(units)
    rows, _ = oracle.score_groups(MESSAGES, RESPONSES, 4)
    return rows, seen


@pytest.mark.slow
def test_scoring_is_split_across_two_ranks_and_gathered_in_order(models):
    single, _ = build_oracle(
        reward_cfg(source="pairwise", model_path=models["pairwise"], max_length=64), "matrix"
    ).score_groups(MESSAGES, RESPONSES, 4)
    (rows0, seen0), (rows1, seen1) = run_ranks(_score_on_two_ranks, 2, models["pairwise"], timeout=240)
    assert seen0 == [12] and seen1 == [12]  # 2 prompts x 4 x 3 ordered pairs, half each
    for rows in (rows0, rows1):
        assert torch.allclose(torch.tensor(rows), torch.tensor(single), atol=1e-6)


def test_prompts_without_ground_truth_load_for_an_oracle_and_are_refused_by_rule(tmp_path):
    import subprocess
    import sys

    from sppo_megatron.config.schema import DataConfig
    from sppo_megatron.data import load_prompt_dataset
    from sppo_megatron.errors import DataError
    from sppo_megatron.testing.tiny import char_tokenizer
    from sppo_megatron.trainer.setup import check_sources

    records = tmp_path / "uf_train.jsonl"
    records.write_text(
        "\n".join(
            json.dumps({"instruction": q, "source": "evol", "completions": []})
            for q in ("name a color", "what is 2 + 3 ?", "say hi")
        )
        + "\n"
    )
    (tmp_path / "uf_test.jsonl").write_text(json.dumps({"prompt": "a b c", "prompt_id": "x"}) + "\n")
    out = tmp_path / "uf"
    done = subprocess.run(
        [
            sys.executable,
            "tools/prepare_ultrafeedback.py",
            "--input",
            str(records),
            "--input",
            str(tmp_path / "uf_test.jsonl"),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    char_tokenizer().save_pretrained(str(tmp_path / "tok"))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    train = load_prompt_dataset(str(out / "train.parquet"), tok, DataConfig(max_prompt_length=64))
    assert [it.ground_truth for it in train.items] == [None] * 3
    assert train[1].messages == [{"role": "user", "content": "what is 2 + 3 ?"}]
    assert train[0].data_source == "ultrafeedback" and train[0].extra_info["source"] == "evol"
    test = load_prompt_dataset(str(out / "test.parquet"), tok, DataConfig(max_prompt_length=64))
    assert test[0].messages[0]["content"] == "a b c"
    with pytest.raises(DataError, match="prompt row 0 has no reward_model.ground_truth; rule-based scoring"):
        check_sources(train, None)


def test_sample_records_carry_messages_score_and_win_rate():
    from sppo_megatron.data import PromptItem
    from sppo_megatron.rollout import RolloutSample
    from sppo_megatron.trainer.samples import RolloutBatch, sample_records

    items = [PromptItem([1], "p", "arith", "5", messages=PROMPTS[0])]
    samples = [RolloutSample(prompt_index=0, sample_index=i, response_ids=[3], finish_reason="stop") for i in range(2)]
    rollout = RolloutBatch(items, 2, samples, ["5", "6"])
    scalar = sample_records(
        rollout, torch.tensor([0.3, 1.2], dtype=torch.float64), AlgorithmConfig(preference="bradley_terry")
    )
    assert [r["score"] for r in scalar] == [0.3, 1.2] and scalar[0]["messages"] == PROMPTS[0]
    assert scalar[0]["win_rate"] == pytest.approx(1 / (1 + math.exp(0.9)))
    rows = torch.tensor([[0.5, 0.2], [0.8, 0.5]], dtype=torch.float64)
    matrix = sample_records(rollout, rows, AlgorithmConfig(preference="matrix"))
    assert [r["score"] for r in matrix] == [None, None] and [r["win_rate"] for r in matrix] == pytest.approx([0.2, 0.8])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize(
    "source, preference", [("reward_model", "bradley_terry"), ("pairwise", "matrix"), ("judge", "matrix")]
)
def test_oracles_score_on_the_gpu_and_leave_it_after_the_phase(models, monkeypatch, source, preference):
    from sppo_megatron.reward.oracles import base

    extra = {"judge_choices": ["a", "b"]} if source == "judge" else {}
    cfg = reward_cfg(source=source, model_path=models[source], max_length=64, **extra)
    with monkeypatch.context() as cpu_only:
        cpu_only.setattr(base, "current_device", lambda: torch.device("cpu"))
        on_host, _ = build_oracle(cfg, preference).score_groups(MESSAGES, RESPONSES, 4)
    oracle = build_oracle(cfg, preference)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    on_gpu, _ = oracle.score_groups(MESSAGES, RESPONSES, 4)
    model_bytes = sum(p.numel() * p.element_size() for p in oracle.model.parameters())
    assert torch.cuda.max_memory_allocated() >= before + model_bytes  # it ran on the GPU
    assert oracle.device.type == "cpu" and torch.cuda.memory_allocated() <= before + (1 << 20)  # and left it
    assert torch.allclose(torch.tensor(on_gpu), torch.tensor(on_host), atol=1e-4)
