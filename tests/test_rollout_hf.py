"""HF rollout engine, buckets, WeightSync, engine choice (CPU)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from sppo_megatron.errors import UserError
from sppo_megatron.rollout import (
    SamplingParams,
    choose_engine,
    create_rollout_engine,
    logp_abs_diff,
    samples_logprobs,
)
from sppo_megatron.rollout.base import sample_seed
from sppo_megatron.rollout.hf_engine import HFRolloutEngine, filter_logits
from sppo_megatron.sync import WeightSync, bucketize
from tests.tiny_models import PEAKY_EOS, peaky_qwen2

PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14], [20]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tiny_qwen2"))
    model = peaky_qwen2(path)
    return path, model.eval()


@pytest.fixture(scope="module")
def engine(tiny):
    eng = HFRolloutEngine(tiny[0], device="cpu")
    eng.update_weights(tiny[1].state_dict().items())
    return eng


def _full_logprobs(model, prompt, response, temperature):
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1 : -1].float()
    t = temperature if temperature > 0 else 1.0
    return torch.log_softmax(logits / t, -1).gather(-1, torch.tensor(response)[:, None])[:, 0]


def test_generate_needs_a_weight_sync_and_an_awake_engine(tiny):
    eng = HFRolloutEngine(tiny[0], device="cpu")  # loaded its files, but nothing was synced yet
    assert eng.capabilities.returns_logprobs and eng.capabilities.keeps_weights_asleep
    with pytest.raises(RuntimeError, match="generate before a weight sync"):
        eng.generate(PROMPTS, SamplingParams(temperature=0.0, max_new_tokens=4), n=1)
    eng.sleep()
    WeightSync(eng).sync(tiny[1].state_dict().items())  # asleep: the weights are taken all the same
    with pytest.raises(RuntimeError, match="asleep: call wake"):
        eng.generate(PROMPTS, SamplingParams(temperature=0.0, max_new_tokens=4), n=1)
    eng.wake()
    assert eng.weights_valid and len(eng.generate(PROMPTS, SamplingParams(temperature=0.0, max_new_tokens=4), n=1)) == 4
    with pytest.raises(RuntimeError, match="not in the stream"):
        eng.update_weights([])
    assert not eng.weights_valid  # a failed sync leaves nothing to trust


def test_greedy_equals_transformers_generate(engine, tiny):
    model = tiny[1]
    samples = engine.generate(PROMPTS, SamplingParams(temperature=0.0, max_new_tokens=16), n=1)
    assert [s.prompt_index for s in samples] == list(range(len(PROMPTS)))
    for p, s in zip(PROMPTS, samples):
        ref = model.generate(
            torch.tensor([p]), do_sample=False, max_new_tokens=16, eos_token_id=PEAKY_EOS, pad_token_id=0
        )
        assert s.response_ids == ref[0, len(p) :].tolist()
        if s.response_ids[-1] == PEAKY_EOS:
            assert s.finish_reason == "stop"  # stop token kept, like verl
        else:
            assert s.finish_reason == "length" and len(s.response_ids) == 16
    assert any(s.finish_reason == "stop" for s in samples), "fixture should hit EOS at least once"


def test_seeded_sampling_is_reproducible_and_independent_of_batching(engine):
    sp = SamplingParams(temperature=1.0, max_new_tokens=12, seed=7)
    a = engine.generate(PROMPTS, sp, n=3)
    b = engine.generate(PROMPTS, sp, n=3)
    assert [s.response_ids for s in a] == [s.response_ids for s in b]
    assert [(s.prompt_index, s.sample_index) for s in a] == [(i, j) for i in range(len(PROMPTS)) for j in range(3)]
    assert len({tuple(s.response_ids) for s in a}) > len(PROMPTS)  # samples of a prompt differ
    c = engine.generate(PROMPTS, dataclasses.replace(sp, seed=8), n=3)
    assert [s.response_ids for s in a] != [s.response_ids for s in c]
    # unpadded, one row at a time: same tokens, same log-probs (left padding is exact)
    single = HFRolloutEngine.__new__(HFRolloutEngine)
    single.__dict__.update(engine.__dict__)
    single.max_batch_size = 1
    d = single.generate(PROMPTS, sp, n=3)
    assert [s.response_ids for s in a] == [s.response_ids for s in d]
    for x, y in zip(a, d):
        assert torch.allclose(torch.tensor(x.logprobs), torch.tensor(y.logprobs), atol=1e-5)


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_logprobs_are_temperature_scaled_full_distribution(engine, tiny, temperature):
    sp = SamplingParams(temperature=temperature, top_k=5, top_p=0.9, max_new_tokens=10, seed=1)
    for p, s in zip(PROMPTS, engine.generate(PROMPTS, sp, n=2)[::2]):
        ref = _full_logprobs(tiny[1], p, s.response_ids, temperature)
        assert torch.allclose(torch.tensor(s.logprobs), ref, atol=1e-5)


def test_stop_ids_and_truncation(engine):
    greedy = engine.generate([PROMPTS[0]], SamplingParams(temperature=0.0, max_new_tokens=16), n=1)[0].response_ids
    k = next(i for i in range(2, len(greedy)) if greedy[i] not in greedy[:i] and greedy[i] != PEAKY_EOS)
    stopped = engine.generate(
        [PROMPTS[0]], SamplingParams(temperature=0.0, max_new_tokens=16, stop_token_ids=(greedy[k],)), n=1
    )[0]
    assert stopped.response_ids == greedy[: k + 1] and stopped.finish_reason == "stop"
    short = engine.generate([PROMPTS[0]], SamplingParams(temperature=0.0, max_new_tokens=2), n=1)[0]
    assert short.response_ids == greedy[:2] and short.finish_reason == ("stop" if greedy[1] == PEAKY_EOS else "length")
    assert len(short.logprobs) == 2


def test_topk1_and_tiny_top_p_are_greedy(engine):
    greedy = [s.response_ids for s in engine.generate(PROMPTS, SamplingParams(temperature=0.0, max_new_tokens=8), n=1)]
    for sp in (
        SamplingParams(temperature=1.3, top_k=1, max_new_tokens=8, seed=3),
        SamplingParams(temperature=1.3, top_p=1e-6, max_new_tokens=8, seed=3),
    ):
        assert [s.response_ids for s in engine.generate(PROMPTS, sp, n=1)] == greedy


def test_filter_logits():
    z = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(z, 2, 1.0)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(z, -1, 0.8)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(z, -1, 0.81)).tolist() == [[False, False, False, True]]
    assert sample_seed(1, 2) != sample_seed(2, 1)


def test_update_weights_copies_and_checks_names(engine, tiny, tmp_path):
    other = peaky_qwen2(str(tmp_path / "other"), seed=1)
    eng = HFRolloutEngine(tiny[0], device="cpu")
    eng.update_weights(other.state_dict().items())  # includes the tied lm_head.weight: fine
    ids = torch.tensor([PROMPTS[0]])
    with torch.no_grad():
        assert torch.equal(eng.model(ids).logits, other(ids).logits)
    tied_free = [(k, v) for k, v in other.state_dict().items() if k != "lm_head.weight"]
    eng.update_weights(tied_free)  # lm_head absent: fine when tied
    with pytest.raises(RuntimeError, match="unknown.*model.layers.9.mlp.up_proj.weight"):
        eng.update_weights(tied_free + [("model.layers.9.mlp.up_proj.weight", torch.zeros(1))])
    with pytest.raises(RuntimeError, match="not in the stream.*model.norm.weight"):
        eng.update_weights([(k, v) for k, v in tied_free if k != "model.norm.weight"])
    with pytest.raises(RuntimeError, match="shape"):
        eng.update_weights([("model.norm.weight", torch.zeros(5))])


def test_untied_model_needs_lm_head(tmp_path):
    m = peaky_qwen2(str(tmp_path / "untied"), tie=False)
    eng = HFRolloutEngine(str(tmp_path / "untied"), device="cpu")
    eng.update_weights(m.state_dict().items())
    with pytest.raises(RuntimeError, match="lm_head.weight"):
        eng.update_weights([(k, v) for k, v in m.state_dict().items() if k != "lm_head.weight"])


def test_config_only_dir_builds_and_fills_from_sync(tmp_path, tiny):
    src = tiny[1]
    src.config.save_pretrained(str(tmp_path))  # no weight files
    eng = HFRolloutEngine(str(tmp_path), device="cpu")
    WeightSync(eng).sync(src.state_dict().items())
    with torch.no_grad():
        assert torch.equal(eng.model(torch.tensor([PROMPTS[1]])).logits, src(torch.tensor([PROMPTS[1]])).logits)


def test_bucketize():
    ts = [
        ("a", torch.zeros(10)),
        ("b", torch.zeros(10, dtype=torch.bfloat16)),
        ("c", torch.zeros(20)),
        ("d", torch.zeros(100)),
        ("e", torch.zeros(5, dtype=torch.bfloat16)),
        ("f", torch.zeros(1)),
    ]
    buckets = list(bucketize(iter(ts), bucket_bytes=128))
    names = [[n for n, _ in b] for b in buckets]
    assert sorted(n for b in names for n in b) == list("abcdef")
    for b in buckets:
        assert len({t.dtype for _, t in b}) == 1
        assert sum(t.numel() * t.element_size() for _, t in b) <= 128 or len(b) == 1
    assert ["d"] in names  # 400 bytes: alone
    assert names.index(["a", "c"]) < names.index(["d"])  # stream order kept within a dtype
    with pytest.raises(ValueError):
        list(bucketize(ts, 0))


class _DeafEngine:
    """Accepts the stream but keeps its old weights (what a wrong name does to SGLang)."""

    name, dtype = "deaf", torch.float32

    def __init__(self, inner):
        self.inner = inner

    def update_weights(self, stream):
        for _ in stream:
            pass

    def read_weight(self, name, rows=4):
        return self.inner.read_weight(name, rows)


def test_weight_sync_metrics_and_check(tiny, tmp_path):
    other = peaky_qwen2(str(tmp_path / "o"), seed=2)
    eng = HFRolloutEngine(tiny[0], device="cpu")
    metrics = WeightSync(eng).sync(other.state_dict().items())
    nbytes = sum(v.numel() * v.element_size() for v in other.state_dict().values())
    assert metrics["sync/bytes"] == nbytes and metrics["sync/checked"] == 1.0
    assert metrics["timing/sync_s"] > 0 and metrics["sync/gb_per_s"] > 0
    third = peaky_qwen2(str(tmp_path / "t"), seed=3)
    with pytest.raises(RuntimeError, match="check failed"):
        WeightSync(_DeafEngine(eng)).sync(third.state_dict().items())


def test_logp_abs_diff_and_samples_logprobs(engine):
    a = torch.tensor([[0.0, -1.0, -2.0], [-1.0, float("nan"), 0.0]])
    b = torch.tensor([[0.5, -1.0, -9.0], [-1.5, -3.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert logp_abs_diff(a, b, mask) == pytest.approx((0.5 + 0 + 0.5 + 0) / 4)
    assert logp_abs_diff(a, b, torch.zeros_like(mask)) != logp_abs_diff(a, b, torch.zeros_like(mask))  # nan
    samples = engine.generate(PROMPTS[:2], SamplingParams(temperature=0.0, max_new_tokens=5), n=1)
    lp, m = samples_logprobs(samples)
    assert lp.shape == m.shape == (2, max(len(s.response_ids) for s in samples))
    assert m.sum().item() == sum(len(s.response_ids) for s in samples)


def test_choose_engine():
    assert choose_engine("auto", has_gpu=False, has_sglang=True) == "hf"
    assert choose_engine("auto", has_gpu=True, has_sglang=True) == "sglang"
    assert choose_engine("hf", has_gpu=True, has_sglang=True) == "hf"
    with pytest.warns(RuntimeWarning, match="FALLING BACK"):
        assert choose_engine("auto", has_gpu=True, has_sglang=False) == "hf"
    with pytest.raises(UserError, match=r"pip install -e \.\[sglang\].*docker/.*install_cpu_engines\.sh"):
        choose_engine("sglang", has_gpu=True, has_sglang=False)
    assert choose_engine("sglang", has_gpu=False, has_sglang=True) == "sglang"  # its CPU backend
    # vllm: on a GPU or CPU (its CPU build), only when named
    for gpu in (True, False):
        assert choose_engine("vllm", has_gpu=gpu, has_vllm=True) == "vllm"
    assert choose_engine("auto", has_gpu=False, has_sglang=False, has_vllm=True) == "hf"
    with pytest.raises(UserError, match=r"pip install -e \.\[vllm\].*install_cpu_engines\.sh"):
        choose_engine("vllm", has_gpu=False, has_vllm=False)


def test_create_rollout_engine_from_config(tiny):
    from sppo_megatron.config.schema import RolloutConfig

    eng = create_rollout_engine(RolloutConfig(engine="hf"), tiny[0], seed=1, log_dir="unused")
    auto_dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32  # rollout.dtype=auto
    assert isinstance(eng, HFRolloutEngine) and eng.dtype == auto_dtype and eng.eos_token_ids == (PEAKY_EOS,)
