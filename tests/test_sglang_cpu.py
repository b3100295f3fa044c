"""The real SGLang 0.5.23, on the CPU, driven through the project's own rollout/sglang classes
(`engine` marker; needs `bash tools/install_cpu_engines.sh --python PYTHON`):

- 2 gloo ranks, a TP=2 Megatron actor, one SGLang engine with TP=2 over both ranks (each rank
  sends its own copy of every bucket) and the HF engine beside it: after a sync, SGLang's
  sampled-token log-probs equal the actor's
  recomputation (rollout/logp_abs_diff <= 1e-4) and its greedy outputs equal the HF engine's;
  after one SPPO update and a sync both follow the new weights, also after sleep -> wake; a call
  with the same seed samples the same tokens, another seed others; shutdown leaves no process;
- `sppo-train` under torchrun (2 ranks, colocated, rollout.engine=sglang): 3 steps, then resumed
  for 2 more, gives the metrics of an uninterrupted 5-step run;
- a SIGKILLed scheduler ends the run with one line naming the engine and exit 1, leaves no SGLang
  process behind and the checkpoints as they were.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time

import psutil
import pytest
import torch

from tests.engines import require_sglang
from tests.multirank import run_ranks
from tests.tiny_models import peaky_qwen2
from tests.tiny_run import ENV, QUICK, ROOT, base_overrides, by_step, train, train_command

pytestmark = [pytest.mark.engine, pytest.mark.timeout(1200)]

PROMPTS = [[5, 6, 7, 8], [10, 11, 12], [20, 21], [30, 31, 32, 33, 34]]
T = 0.8


@pytest.fixture(autouse=True)
def _sglang_installed():
    require_sglang()


def _acceptance(hf_dir, log_dir):
    import dataclasses

    import torch.distributed as dist

    import sppo_megatron.actor.actor  # noqa: F401 - imports megatron before init_distributed
    from sppo_megatron.actor.batch import SequenceBatch
    from sppo_megatron.config.schema import (
        Config,
        DataConfig,
        ModelConfig,
        OptimConfig,
        ParallelConfig,
        RolloutConfig,
        TrainConfig,
        TrainerConfig,
    )
    from sppo_megatron.rollout import SamplingParams, create_rollout_engine, logp_abs_diff, samples_logprobs
    from sppo_megatron.sync import WeightSync
    from sppo_megatron.trainer.setup import build_actor

    cfg = Config(
        model=ModelConfig(path=hf_dir, dtype="fp32"),
        parallel=ParallelConfig(tp=2),
        rollout=RolloutConfig(engine="sglang", n=2, temperature=T, tp=2),
        data=DataConfig(train_batch_size=len(PROMPTS)),
        train=TrainConfig(mini_batch_size=len(PROMPTS)),
        optim=OptimConfig(lr=1e-2, weight_decay=0.0),
        trainer=TrainerConfig(seed=7),
    )
    actor = build_actor(cfg)
    sglang = create_rollout_engine(cfg.rollout, hf_dir, seed=7, log_dir=log_dir)
    hf = create_rollout_engine(dataclasses.replace(cfg.rollout, engine="hf", tp=1), hf_dir, seed=7, log_dir=log_dir)
    assert sglang.describe() == "sglang x1" and hf.describe() == "hf x2"
    report = {"pids": sorted(sglang.processes.pids), "logp_diff": [], "greedy": [], "hf_greedy": []}
    with pytest.raises(RuntimeError, match="before a weight sync"):
        sglang.generate(PROMPTS, SamplingParams(temperature=0.0, max_new_tokens=4), n=1)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=8)
    sampling = SamplingParams(temperature=T, max_new_tokens=6, seed=3)
    for phase in ("initial", "updated"):
        for engine in (sglang, hf):
            WeightSync(engine).sync(actor.export_hf_weights())
        samples = sglang.generate(PROMPTS, sampling, n=cfg.rollout.n)
        tokens = [s.response_ids for s in samples]
        if phase == "initial":
            report["same_seed"] = [s.response_ids for s in sglang.generate(PROMPTS, sampling, n=2)] == tokens
            other = dataclasses.replace(sampling, seed=4)
            report["other_seed"] = [s.response_ids for s in sglang.generate(PROMPTS, other, n=2)] != tokens
        batch = SequenceBatch([PROMPTS[s.prompt_index] for s in samples], tokens)
        old = actor.log_probs(batch, temperature=T)
        rollout_lp, _ = samples_logprobs(samples, old.logp.shape[1])
        report["logp_diff"].append(logp_abs_diff(rollout_lp, old.logp, old.mask))
        report["greedy"].append([s.response_ids for s in sglang.generate(PROMPTS, greedy, n=1)])
        report["hf_greedy"].append([s.response_ids for s in hf.generate(PROMPTS, greedy, n=1)])
        if phase == "initial":
            targets = torch.tensor([1.0, -1.0] * len(PROMPTS))
            actor.update(batch, targets, old)
    for engine in (sglang, hf):  # the colocated hand-over; on the CPU SGLang keeps its weights asleep
        engine.sleep()
        engine.wake()
    report["after_wake"] = [s.response_ids for s in sglang.generate(PROMPTS, greedy, n=1)]
    sglang.shutdown()
    hf.shutdown()
    dist.barrier()
    return report


def _gone(pids, timeout: float = 30.0) -> list:
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.2)
    return alive


def test_sglang_after_tp2_sync_matches_actor_and_hf_engine(tmp_path):
    hf_dir = str(tmp_path / "hf")
    peaky_qwen2(hf_dir, seed=0)
    reports = run_ranks(_acceptance, 2, hf_dir, str(tmp_path / "logs"), timeout=900, env={"CUDA_VISIBLE_DEVICES": ""})
    assert len(reports[0]["pids"]) >= 3 and not reports[1]["pids"]  # 2 schedulers + detokenizer, on the host
    for r in reports:
        assert max(r["logp_diff"]) <= 1e-4, r["logp_diff"]
        assert r["greedy"] == r["hf_greedy"], (r["greedy"], r["hf_greedy"])
        assert r["greedy"][0] != r["greedy"][1]  # the update moved the greedy outputs: SGLang follows it
        assert r["after_wake"] == r["greedy"][1] == r["hf_greedy"][1]
        assert r["same_seed"] and r["other_seed"]
    assert reports[0]["greedy"] == reports[1]["greedy"]
    assert not _gone([p for r in reports for p in r["pids"]]), "SGLang processes outlived shutdown"


SGLANG_RUN = QUICK + ["rollout.engine=sglang", "parallel.tp=2"]  # rollout.tp=1: an engine per rank
#: metrics that measure time or speed, the only ones two runs may disagree on
_TIMING = ("timing/", "perf/", "memory/", "sync/gb_per_s")


def test_sppo_train_with_sglang_resumes_exactly(tiny_assets, tmp_path):
    full, split = tmp_path / "full", tmp_path / "split"
    common = base_overrides(tiny_assets, "") + SGLANG_RUN
    train([*common, f"trainer.output_dir={full}", "trainer.total_steps=5"], nproc=2, timeout=900)
    train([*common, f"trainer.output_dir={split}", "trainer.total_steps=3"], nproc=2, timeout=900)
    resumed = train([*common, f"trainer.output_dir={split}", "trainer.total_steps=5"], nproc=2, timeout=900)
    assert "resumed from" in resumed.stdout and "rollout sglang x2" in resumed.stdout
    a, b = by_step(str(full)), by_step(str(split))
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5]
    for step in range(1, 6):
        assert a[step]["rollout/logp_abs_diff"] <= 1e-4, (step, a[step]["rollout/logp_abs_diff"])
        keys = {k for k in a[step] if not k.startswith(_TIMING)}
        extra = {k for k in b[step] if not k.startswith(_TIMING)} - keys
        assert extra == (
            {k for k in b[step] if k.startswith("val/")} if step == 3 else set()
        )  # its last step validates
        assert {k: b[step][k] for k in keys} == {k: a[step][k] for k in keys}, step


def _checkpoint_digest(ckpt_root) -> dict:
    """sha256 of every file of the complete checkpoints (step_N/, not a save in progress)."""
    out = {}
    for step in sorted(os.listdir(ckpt_root)):
        if not step.startswith("step_"):
            continue
        for dirpath, _, files in os.walk(os.path.join(ckpt_root, step)):
            for name in files:
                path = os.path.join(dirpath, name)
                with open(path, "rb") as fh:
                    out[os.path.relpath(path, ckpt_root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def test_killed_scheduler_is_one_line_and_leaves_nothing_behind(tiny_assets, tmp_path):
    out = tmp_path / "run"
    overrides = base_overrides(tiny_assets, str(out)) + QUICK + ["rollout.engine=sglang", "trainer.save_freq=1"]
    proc = subprocess.Popen(
        train_command([*overrides, "trainer.total_steps=500"]),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **ENV},
        cwd=ROOT,
    )
    latest = out / "checkpoints" / "latest"
    deadline = time.monotonic() + 600
    while not latest.exists() and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.2)
    engine = [p for p in psutil.Process(proc.pid).children(recursive=True) if "sglang::" in p.name()]
    schedulers = [p for p in engine if p.name().startswith("sglang::sched")]
    assert len(schedulers) == 1, [p.name() for p in engine]
    os.kill(proc.pid, signal.SIGSTOP)  # no checkpoint may start while the digest is taken
    before = _checkpoint_digest(out / "checkpoints")
    schedulers[0].kill()
    os.kill(proc.pid, signal.SIGCONT)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("sppo-train: error:")]
    assert len(errors) == 1 and "SGLang engine hosted by rank 0 died" in errors[0], stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert not _gone([p.pid for p in engine]), "SGLang processes outlived the trainer"
    after = _checkpoint_digest(out / "checkpoints")
    assert {k: after.get(k) for k in before} == before  # a save the step had begun may have completed


def _preemption_handler(signum, frame):  # stands in for the trainer's PreemptionFlag
    pass


def _start_engine(hf_dir, log_dir, **kwargs):
    from sppo_megatron.rollout.sglang import SglangRolloutEngine

    return SglangRolloutEngine(hf_dir, tp=1, dtype=torch.float32, seed=1, log_dir=str(log_dir), **kwargs)


@pytest.fixture
def process_state():
    """What starting an engine may change in this (pytest's) process, restored afterwards."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGQUIT, signal.SIGTERM, signal.SIGINT)}
    keys = (
        "CUDA_DEVICE_MAX_CONNECTIONS",
        "NCCL_CUMEM_ENABLE",
        "PYTORCH_CUDA_ALLOC_CONF",
        "TORCHELASTIC_USE_AGENT_STORE",
    )
    env = {k: os.environ.get(k) for k in keys}
    signal.signal(signal.SIGTERM, _preemption_handler)
    os.environ.update(
        CUDA_DEVICE_MAX_CONNECTIONS="1",
        PYTORCH_CUDA_ALLOC_CONF="expandable_segments:True,max_split_size_mb:64",
        TORCHELASTIC_USE_AGENT_STORE="True",  # as under torchrun: the engine's processes must not see it
    )
    os.environ.pop("NCCL_CUMEM_ENABLE", None)
    yield
    for sig, handler in handlers.items():
        signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
    for key, value in env.items():
        os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


def test_engine_start_leaves_this_process_as_it_was(tmp_path, process_state):
    """In one process: the start gives back the environment, start method and signals (SIGTERM
    stays the trainer's, SIGQUIT reports the engine's death); a refusal names the call; the
    per-tensor sync mode loads the weights; a failed start leaves no process and the handlers."""
    import multiprocessing as mp

    from sppo_megatron.rollout import SamplingParams
    from sppo_megatron.rollout.hf_engine import HFRolloutEngine
    from sppo_megatron.rollout.sglang.process import engine_died_handler
    from tests.tiny_models import hf_state_dict

    hf_dir = str(tmp_path / "hf")
    peaky_qwen2(hf_dir, seed=1)
    method = mp.get_start_method(allow_none=True)  # writing the model may have fixed it already
    engine = _start_engine(hf_dir, tmp_path, sync_mode="tensor")
    try:
        assert os.environ["CUDA_DEVICE_MAX_CONNECTIONS"] == "1" and "NCCL_CUMEM_ENABLE" not in os.environ
        assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True,max_split_size_mb:64"
        assert os.environ["TORCHELASTIC_USE_AGENT_STORE"] == "True"
        assert mp.get_start_method(allow_none=True) == method
        assert signal.getsignal(signal.SIGTERM) is _preemption_handler
        assert signal.getsignal(signal.SIGQUIT) is engine_died_handler
        assert (tmp_path / "sglang_engine_rank0.log").stat().st_size > 0  # the engine processes' stderr
        with pytest.raises(
            RuntimeError, match=r"update_weights_from_tensor \(engine on rank 0\) refused:.*begin_weight_update"
        ):
            engine._checked("update_weights_from_tensor", named_tensors=[], load_format=None, flush_cache=False)
        weights = hf_state_dict(hf_dir)
        engine.update_weights(weights.items())
        assert not any(t.is_shared() for t in weights.values())  # the caller's tensors stay where they were
        hf = HFRolloutEngine(hf_dir, device="cpu")
        hf.update_weights(weights.items())
        greedy = SamplingParams(temperature=0.0, max_new_tokens=8)
        assert [s.response_ids for s in engine.generate(PROMPTS, greedy, n=1)] == [
            s.response_ids for s in hf.generate(PROMPTS, greedy, n=1)
        ]
        pids = sorted(engine.processes.pids)
    finally:
        engine.shutdown()
    engine.shutdown()  # idempotent
    assert not _gone(pids)

    broken = tmp_path / "broken"
    broken.mkdir()
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "architectures": ["NoSuchModelForCausalLM"]}))
    before = _engine_children()
    with pytest.raises(RuntimeError, match="starting the SGLang engine on rank 0 failed"):
        _start_engine(str(broken), tmp_path)
    assert signal.getsignal(signal.SIGTERM) is _preemption_handler
    assert not _gone(_engine_children() - before)


def _engine_children() -> set:
    """This process's children, less multiprocessing's resource tracker (it lives as long as we do)."""
    return {p.pid for p in psutil.Process().children() if "resource_tracker" not in " ".join(p.cmdline())}
