"""The real SGLang engine on a GPU (skipped without CUDA, sglang or torch_memory_saver).

A tiny Llama (Llama: SGLang 0.5.23's get_weights_by_name works for it, so the post-sync check
runs) is served by a colocated engine started with dummy weights; the tests sync real weights,
generate, compare with transformers, cycle sleep/wake, check the log-prob parity with the
Megatron actor and that shutdown() leaves the trainer's other children alone.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from sppo_megatron.testing.tiny import tiny_config, tiny_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(importlib.util.find_spec("sglang") is None, reason="needs sglang (pip install -e .[sglang])"),
    pytest.mark.skipif(importlib.util.find_spec("torch_memory_saver") is None, reason="needs torch_memory_saver"),
]

PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14, 15], [20]]
EOS = 2


def make_tiny_llama(path: str, seed: int = 0):
    config = tiny_config(
        "llama",
        vocab_size=1024,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        max_position_embeddings=1024,
        initializer_range=0.3,
        eos_token_id=EOS,
    )
    model = tiny_model(config, seed).to(torch.bfloat16)
    model.save_pretrained(path)  # config.json records bfloat16
    return model


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tiny_llama"))
    model = make_tiny_llama(path)
    return path, model.cuda().eval()


@pytest.fixture(scope="module")
def engine(llama, tmp_path_factory):
    from sppo_megatron.rollout.sglang import SglangRolloutEngine

    before = os.environ.get("CUDA_DEVICE_MAX_CONNECTIONS")
    eng = SglangRolloutEngine(
        llama[0],
        tp=1,
        mem_fraction=0.3,
        dtype=torch.bfloat16,
        bucket_mb=1,
        log_dir=str(tmp_path_factory.mktemp("sglang_logs")),
    )
    assert os.environ.get("CUDA_DEVICE_MAX_CONNECTIONS") == before
    yield eng
    eng.shutdown()


def _stream(model):
    return ((k, v.detach()) for k, v in model.state_dict().items())


def test_refuses_generate_before_sync_and_update_outside_session(engine):
    from sppo_megatron.rollout import SamplingParams
    from sppo_megatron.rollout.sglang.contract import check_result

    with pytest.raises(RuntimeError, match="before a weight sync"):
        engine.generate(PROMPTS, SamplingParams(temperature=0.0, max_new_tokens=4), n=1)
    # the 0.5.21+ session gate, for real: outside begin/end the update is refused
    result = engine._call("update_weights_from_tensor", named_tensors=[], load_format=None, flush_cache=False)
    with pytest.raises(RuntimeError, match="refused"):
        check_result("update_weights_from_tensor", result)


def test_sync_and_greedy_matches_transformers(engine, llama):
    from sppo_megatron.rollout import SamplingParams
    from sppo_megatron.sync import WeightSync

    model = llama[1]
    metrics = WeightSync(engine).sync(_stream(model))
    assert metrics["sync/checked"] == 1.0, "get_weights_by_name read-back should work for Llama"
    samples = engine.generate(PROMPTS, SamplingParams(temperature=0.0, max_new_tokens=16), n=1)
    for p, s in zip(PROMPTS, samples):
        ref = model.generate(
            torch.tensor([p], device="cuda"), do_sample=False, max_new_tokens=16, eos_token_id=EOS, pad_token_id=0
        )[0, len(p) :].tolist()
        # bf16 kernels differ between SGLang and transformers: the first tokens must agree
        assert s.response_ids[:8] == ref[:8], (s.response_ids, ref)


def test_logprobs_match_recomputed(engine, llama):
    from sppo_megatron.rollout import SamplingParams
    from sppo_megatron.sync import WeightSync

    model = llama[1]
    WeightSync(engine).sync(_stream(model))
    t = 0.8
    samples = engine.generate(PROMPTS, SamplingParams(temperature=t, max_new_tokens=12), n=2)
    diffs = []
    for s in samples:
        p = PROMPTS[s.prompt_index]
        ids = torch.tensor([p + s.response_ids], device="cuda")
        with torch.no_grad():
            logits = model(ids).logits[0, len(p) - 1 : -1].float()
        ref = torch.log_softmax(logits / t, -1).gather(-1, torch.tensor(s.response_ids, device="cuda")[:, None])[:, 0]
        diffs.append((torch.tensor(s.logprobs, device="cuda") - ref).abs().mean().item())
    assert sum(diffs) / len(diffs) < 0.05, diffs  # bf16


def test_sleep_wake_cycles_do_not_grow_memory(engine, llama):
    from sppo_megatron.rollout import SamplingParams
    from sppo_megatron.sync import WeightSync

    model, sync = llama[1], WeightSync(engine)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=8)
    sync.sync(_stream(model))
    first = [s.response_ids for s in engine.generate(PROMPTS, greedy, n=1)]
    free_asleep, free_awake = [], []
    for _ in range(20):
        engine.sleep()
        torch.cuda.synchronize()
        free_asleep.append(torch.cuda.mem_get_info()[0])
        sync.sync(_stream(model))  # resumes the weights, refills them
        engine.wake()  # the KV cache and CUDA graphs
        assert [s.response_ids for s in engine.generate(PROMPTS, greedy, n=1)] == first
        free_awake.append(torch.cuda.mem_get_info()[0])
    mib = 1 << 20
    assert min(free_asleep) > max(free_awake) + 64 * mib, "sleep should free the KV cache"
    assert max(free_asleep[2:]) - min(free_asleep[2:]) < 256 * mib, [f // mib for f in free_asleep]


def test_shutdown_spares_other_children(llama, tmp_path):
    from sppo_megatron.rollout.sglang import SglangRolloutEngine

    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        eng = SglangRolloutEngine(llama[0], tp=1, mem_fraction=0.2, dtype=torch.bfloat16, log_dir=str(tmp_path))
        pids = set(eng.processes.pids)
        assert pids and other.pid not in pids
        eng.shutdown()
        assert other.poll() is None, "SGLang shutdown killed a process it did not start"
        import psutil

        assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    finally:
        other.kill()


def test_logp_parity_with_megatron_actor(llama, tmp_path):
    """Single-rank TP=1 Megatron actor (bf16) -> SGLang sync -> rollout/logp_abs_diff."""
    from sppo_megatron.actor.batch import SequenceBatch
    from sppo_megatron.config.schema import Config, DataConfig, ModelConfig, RolloutConfig, TrainConfig, TrainerConfig
    from sppo_megatron.rollout import SamplingParams, create_rollout_engine, logp_abs_diff, samples_logprobs
    from sppo_megatron.sync import WeightSync
    from sppo_megatron.trainer.setup import build_actor

    cfg = Config(
        model=ModelConfig(path=llama[0], dtype="bf16"),
        rollout=RolloutConfig(engine="sglang", n=2, temperature=0.8, mem_fraction=0.2),
        trainer=TrainerConfig(output_dir=str(tmp_path)),
        data=DataConfig(train_batch_size=len(PROMPTS)),
        train=TrainConfig(mini_batch_size=len(PROMPTS)),
    )
    actor = build_actor(cfg)
    engine = None
    try:
        engine = create_rollout_engine(
            cfg.rollout, llama[0], seed=cfg.trainer.seed, log_dir=os.path.join(cfg.trainer.output_dir, "logs")
        )
        sync = WeightSync(engine)
        for step in range(2):
            sync.sync(actor.export_hf_weights())
            engine.wake()
            samples = engine.generate(PROMPTS, SamplingParams(temperature=0.8, max_new_tokens=12), n=2)
            engine.sleep()
            batch = SequenceBatch([PROMPTS[s.prompt_index] for s in samples], [s.response_ids for s in samples])
            old = actor.log_probs(batch, temperature=0.8)
            lp, _ = samples_logprobs(samples, old.logp.shape[1])
            assert logp_abs_diff(lp, old.logp, old.mask) < 0.05  # bf16 engine vs bf16 Megatron
            if step == 0:
                actor.update(batch, torch.tensor([0.5, -0.5] * len(PROMPTS)), old)
    finally:
        if engine is not None:
            engine.shutdown()
        from sppo_megatron.platform.distributed import destroy_distributed

        destroy_distributed()
