"""The vLLM rollout engine for real (the CPU build), in this process, tiny fp32 models, one engine
shared by the module (tied embeddings): log-probs and greedy tokens equal transformers', generations follow the
weights after an update (with prompts long enough to hit a stale prefix cache) and after
sleep -> wake, per-request seeds, stop ids, bad streams, the process state the engine would
change, and a shutdown that leaves no process and no /dev/shm file. A mixture-of-experts model
syncs twice (vLLM 0.32.0's CPU MoE kernel needs its weights repacked after a reload)."""

from __future__ import annotations

import gc
import os
import random
import weakref

import pytest
import torch
import torch.distributed as dist

from sppo_megatron.models.hf_io import iter_hf_weights
from sppo_megatron.rollout import FINISH_LENGTH, FINISH_STOP, SamplingParams
from sppo_megatron.testing.tiny import EOS_ID
from tests.engines import needs_vllm
from tests.vllm_testing import engine_children, hf_greedy, hf_logprobs, leftover_shm, make_model, shm_files

pytestmark = [pytest.mark.engine, needs_vllm]

T = 0.8
LONG = [5 + (7 * j) % 90 for j in range(150)]  # > 128 tokens: several KV blocks a stale prefix cache reuses
PROMPTS = [[5, 6, 7, 8], [10, 11, 12], LONG]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    from sppo_megatron.rollout.vllm import VllmRolloutEngine

    root = tmp_path_factory.mktemp("vllm_engine")
    # tied embeddings, as the demo's model: vLLM's CPU LM head must be remade after a reload
    dirs = {k: make_model("qwen2-tied", str(root / k), seed=s) for k, s in (("a", 0), ("b", 1))}
    models = {k: AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval() for k, d in dirs.items()}
    env, rng = dict(os.environ), random.getstate()
    set_threads, threads, shm = torch.set_num_threads, torch.get_num_threads(), shm_files()
    engine = VllmRolloutEngine(dirs["a"], dtype=torch.float32, seed=5)
    state = {
        "env": {k: (env.get(k), os.environ.get(k)) for k in set(env) | set(os.environ) if not k.startswith("VLLM_")},
        "rng_kept": random.getstate() == rng,
        "threads": (set_threads, threads),
        "shm": shm,
    }
    yield engine, dirs, models, state
    engine.shutdown()


def _check_parity(engine, model, prompts, n=3):
    samples = engine.generate(prompts, SamplingParams(temperature=T, max_new_tokens=8, seed=11), n=n)
    assert len(samples) == len(prompts) * n
    for s in samples:
        ref = hf_logprobs(model, prompts[s.prompt_index], s.response_ids, T)
        assert torch.allclose(torch.tensor(s.logprobs), ref, atol=1e-4), (s, ref)
    return samples


def _greedy(engine, prompts, steps=8):
    return [
        s.response_ids for s in engine.generate(prompts, SamplingParams(temperature=0.0, max_new_tokens=steps), n=1)
    ]


def _ref_greedy(model, prompts, steps=8):
    out = []
    for p in prompts:
        ref = hf_greedy(model, p, steps)
        out.append(ref[: ref.index(EOS_ID) + 1] if EOS_ID in ref else ref)
    return out


def test_start_leaves_the_process_as_it_was(setup):
    engine, _, _, state = setup
    changed = {k: v for k, v in state["env"].items() if v[0] != v[1]}
    assert not changed, changed  # LOCAL_WORLD_SIZE, LD_PRELOAD, ... (vLLM rewrites them)
    assert state["rng_kept"]
    assert torch.set_num_threads is state["threads"][0] and torch.get_num_threads() == state["threads"][1]
    assert engine_children() == []  # in-process: no engine processes
    with pytest.raises(RuntimeError, match="before a weight sync"):
        engine.generate(PROMPTS, SamplingParams(), n=1)


def test_logprobs_and_greedy_equal_transformers_after_a_sync(setup):
    engine, dirs, models, _ = setup
    engine.update_weights(iter_hf_weights(dirs["a"]))
    samples = _check_parity(engine, models["a"], PROMPTS)
    assert {s.finish_reason for s in samples} <= {FINISH_STOP, FINISH_LENGTH}
    assert _greedy(engine, PROMPTS) == _ref_greedy(models["a"], PROMPTS)
    assert engine.read_weight("model.layers.0.input_layernorm.weight").tolist() == (
        dict(iter_hf_weights(dirs["a"]))["model.layers.0.input_layernorm.weight"][:4].tolist()
    )


def test_generations_follow_the_weights_after_an_update_and_sleep_wake(setup):
    engine, dirs, models, _ = setup
    engine.update_weights(iter_hf_weights(dirs["a"]))
    before = _greedy(engine, PROMPTS)
    engine.update_weights(iter_hf_weights(dirs["b"]))  # the prefix cache still holds LONG's KV under "a"
    after = _greedy(engine, PROMPTS)
    assert after == _ref_greedy(models["b"], PROMPTS) and after != before
    _check_parity(engine, models["b"], PROMPTS)
    engine.sleep()  # a no-op on CPU (no sleep mode): the weights stay valid
    assert engine.weights_valid
    engine.wake()
    assert _greedy(engine, PROMPTS) == after
    _check_parity(engine, models["b"], [LONG])


def test_seeded_samples_do_not_depend_on_the_split_and_stop_ids_end_them(setup):
    engine, dirs, _, _ = setup
    engine.update_weights(iter_hf_weights(dirs["a"]))
    sampling = SamplingParams(temperature=1.0, max_new_tokens=6, seed=4)
    both = engine.generate(PROMPTS[:2], sampling, n=2)
    assert [s.response_ids for s in both] == [s.response_ids for s in engine.generate(PROMPTS[:2], sampling, n=2)]
    second = engine._generate_local([PROMPTS[1]], sampling, 2, 1)  # prompt 1 alone, as another engine's share
    assert [s.response_ids for s in second] == [s.response_ids for s in both[2:]]
    other = engine.generate(PROMPTS[:2], SamplingParams(temperature=1.0, max_new_tokens=6, seed=5), n=2)
    assert [s.response_ids for s in other] != [s.response_ids for s in both]
    greedy = _greedy(engine, PROMPTS[:1], steps=6)[0]
    stop = greedy[2]
    stopped = engine.generate(
        PROMPTS[:1], SamplingParams(temperature=0.0, max_new_tokens=6, stop_token_ids=(stop,)), n=1
    )[0]
    assert stopped.response_ids == greedy[: greedy.index(stop) + 1] and stopped.finish_reason == FINISH_STOP
    assert len(stopped.logprobs) == len(stopped.response_ids)


def test_a_bad_stream_is_one_line_and_leaves_the_weights_invalid(setup):
    """A stream that misses a tensor fails after the reload (vLLM only logs it) and the next full
    sync recovers; one with a name the model lacks fails inside vLLM's loader, which leaves its
    reload state half-done: the weights stay invalid (a run stops on the error anyway)."""
    engine, dirs, _, _ = setup
    weights = list(iter_hf_weights(dirs["a"]))
    for stream, match in (
        ([(n, t) for n, t in weights if n != "model.norm.weight"], "not loaded"),
        (weights + [("model.layers.0.mlp.nonsense.weight", weights[0][1])], "nonsense"),
    ):
        with pytest.raises(RuntimeError, match=match) as info:
            engine.update_weights(iter(stream))
        assert "vLLM reload_weights (engine on rank 0) failed" in str(info.value)
        assert "\n" not in str(info.value)
        assert not engine.weights_valid
        with pytest.raises(RuntimeError, match="before a weight sync"):
            engine.generate(PROMPTS, SamplingParams(), n=1)
        if match == "not loaded":
            engine.update_weights(iter(weights))
            assert engine.weights_valid


def test_shutdown_leaves_no_process_no_shm_file_and_no_process_group(setup):
    engine, _, _, state = setup
    llm = weakref.ref(engine.llm)
    engine.shutdown()
    engine.shutdown()  # idempotent
    gc.collect()
    assert llm() is None, [type(r) for r in gc.get_referrers(llm())]  # the model and KV cache are freed
    assert engine_children() == []
    assert leftover_shm(state["shm"]) == set()
    assert not dist.is_initialized()  # the group vLLM created for itself went with it
    with pytest.raises(RuntimeError, match="is shut down"):
        engine.update_weights(iter([]))


def test_moe_model_syncs_twice(tmp_path):
    """vLLM 0.32.0's CPU MoE kernel prepacks its expert weights after the first load only: without
    the adapter's repack a reload gives log-probs off by ~3 nats (so does a tied LM head, which the
    module's engine covers)."""
    from transformers import AutoModelForCausalLM

    from sppo_megatron.rollout.vllm import VllmRolloutEngine

    dirs = [make_model("qwen3-moe", str(tmp_path / f"m{s}"), seed=s) for s in (0, 1)]
    engine = VllmRolloutEngine(dirs[0], dtype=torch.float32, seed=5)
    try:
        for d in dirs:
            engine.update_weights(iter_hf_weights(d))
            _check_parity(engine, AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval(), PROMPTS[:2])
    finally:
        engine.shutdown()
