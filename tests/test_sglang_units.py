"""The SGLang adapter's control flow on CPU, against a stand-in for sglang that follows the
0.5.23 semantics we rely on (session-gated updates, per-TP-rank payloads, (ok, message) results,
release/resume returning None and refusing to resume what was not released, what the
constructor does to the process). The real engine runs in the GPU tests."""

from __future__ import annotations

import atexit
import io
import multiprocessing as mp
import os
import signal
import types
from dataclasses import dataclass
from typing import Any, Dict, List

import pytest
import torch

from sppo_megatron.errors import UserError
from sppo_megatron.rollout.base import SamplingParams
from sppo_megatron.rollout.sglang import SglangRolloutEngine
from sppo_megatron.rollout.sglang.contract import (
    ENGINE_MODULE_PATCHED,
    FLATTENED_PAYLOAD_KEYS,
    MEMORY_TAGS,
    check_result,
    check_sglang_version,
    parse_output,
)
from sppo_megatron.rollout.sglang.process import engine_died_handler, strip_expandable_segments
from tests.multirank import run_ranks
from tests.sglang_manifest import load_manifest

EOS = 2


# ---------------------------------------------------------------- the stand-in ------------
class FakeSerializer:
    @staticmethod
    def serialize(obj, output_str=False):
        buf = io.BytesIO()
        torch.save(obj, buf)
        return buf.getvalue()

    @staticmethod
    def deserialize(data):
        return torch.load(io.BytesIO(data), weights_only=False)


@dataclass
class FakeMeta:
    name: str
    shape: Any
    dtype: Any
    start_idx: int
    end_idx: int
    numel: int


class FakeBucket:
    """Same layout as sglang.srt.weight_sync.tensor_bucket.FlattenedTensorBucket."""

    def __init__(self, named_tensors=None, flattened_tensor=None, metadata=None):
        if named_tensors is not None:
            flats, self.metadata, idx = [], [], 0
            for name, t in named_tensors:
                f = t.flatten().view(torch.uint8)
                self.metadata.append(FakeMeta(name, t.shape, t.dtype, idx, idx + f.numel(), f.numel()))
                flats.append(f)
                idx += f.numel()
            self.flattened_tensor = torch.cat(flats)
        else:
            self.flattened_tensor, self.metadata = flattened_tensor, metadata

    def get_flattened_tensor(self):
        return self.flattened_tensor

    def get_metadata(self):
        return self.metadata

    def reconstruct_tensors(self):
        return [
            (m.name, self.flattened_tensor[m.start_idx : m.end_idx].view(m.dtype).reshape(m.shape))
            for m in self.metadata
        ]


@dataclass
class FakeLocalSerializedTensor:
    values: List[bytes]


class FakeEngine:
    instances: List["FakeEngine"] = []
    refuse_update = False

    def __init__(self, **kwargs):
        unknown = set(kwargs) - set(load_manifest()["server_args_fields"])
        if unknown:
            raise TypeError(f"unexpected keyword arguments {unknown}")
        self.kwargs = kwargs
        self.tp = kwargs["tp_size"]
        self.alloc_conf_seen = os.environ.get("PYTORCH_CUDA_ALLOC_CONF")
        os.write(2, b"fake engine: scheduler output\n")  # engine processes inherit fd 2
        # what sglang.Engine does to the calling process
        os.environ["CUDA_DEVICE_MAX_CONNECTIONS"] = "8"
        os.environ.setdefault("NCCL_CUMEM_ENABLE", "0")
        mp.set_start_method("spawn", force=True)
        signal.signal(signal.SIGQUIT, lambda *a: None)
        atexit.register(self.shutdown)
        self.calls: List[str] = []
        self.session = False
        self.offload: set = set()
        self.weights: Dict[str, List[torch.Tensor]] = {}
        self.shutdown_kills: List[Any] = []
        FakeEngine.instances.append(self)

    def _log(self, name):
        self.calls.append(name)

    def flush_cache(self):
        self._log("flush_cache")
        return types.SimpleNamespace(success=True, message="")

    def get_all_child_pids(self):
        return []

    def begin_weight_update(self):
        self._log("begin_weight_update")
        if self.session:
            return False, "a weight-update session is already open"
        self.session = True
        return True, "ok"

    def end_weight_update(self):
        self._log("end_weight_update")
        self.session = False
        return True, "ok"

    def update_weights_from_tensor(self, named_tensors, load_format=None, flush_cache=True):
        self._log("update_weights_from_tensor")
        if not self.session:
            return False, "update_weights_from_tensor must run between begin_weight_update() and end_weight_update()"
        if FakeEngine.refuse_update:
            return False, "boom"
        assert "weights" not in self.offload
        if load_format == "flattened_bucket":
            assert len(named_tensors) == self.tp  # one payload per engine TP rank
            for rank, payload in enumerate(named_tensors):
                data = FakeSerializer.deserialize(payload)
                assert set(data) == set(FLATTENED_PAYLOAD_KEYS)
                for name, t in FakeBucket(
                    flattened_tensor=data["flattened_tensor"], metadata=data["metadata"]
                ).reconstruct_tensors():
                    self.weights.setdefault(name, [None] * self.tp)[rank] = t.cpu().clone()
        else:
            for name, lst in named_tensors:
                for rank in range(self.tp):
                    self.weights.setdefault(name, [None] * self.tp)[rank] = (
                        FakeSerializer.deserialize(lst.values[rank]).cpu().clone()
                    )
        return True, "Success"

    def release_memory_occupation(self, tags=None):
        self._log(f"release:{','.join(tags)}")
        self.offload.update(tags)

    def resume_memory_occupation(self, tags=None):
        self._log(f"resume:{','.join(tags)}")
        for t in tags:
            self.offload.remove(t)  # KeyError when not released, like the scheduler

    def generate(self, input_ids=None, sampling_params=None, return_logprob=False):
        self._log("generate")
        assert not self.offload & {"kv_cache", "weights"}
        n, out = sampling_params["n"], []
        for p in input_ids:
            for j in range(n):
                ids = [(p[-1] + j + k) % 50 + 3 for k in range(sampling_params["max_new_tokens"] - 1)] + [EOS]
                stop = EOS in sampling_params["stop_token_ids"]
                ids = ids if stop else ids[:-1]
                out.append(
                    {
                        "output_ids": ids,
                        "meta_info": {
                            "finish_reason": {"type": "stop", "matched": EOS}
                            if stop
                            else {"type": "length", "length": len(ids)},
                            "output_token_logprobs": [(-0.5, t, None) for t in ids],
                        },
                    }
                )
        return out

    def get_weights_by_name(self, name, truncate_size=100):
        return None  # Qwen2 in 0.5.23

    def shutdown(self):
        self._log("shutdown")
        self.shutdown_kills.append(FAKE_ENGINE_MODULE.kill_process_tree)
        FAKE_ENGINE_MODULE.kill_process_tree(os.getpid(), include_parent=False, wait_timeout=1)


def _kill_everything(*args, **kwargs):
    raise AssertionError("SGLang's own kill_process_tree would kill every child of the trainer")


FAKE_ENGINE_MODULE = types.SimpleNamespace(kill_process_tree=_kill_everything)


class FakeAPI:
    version = "0.5.23"
    Engine = FakeEngine
    FlattenedTensorBucket = FakeBucket
    MultiprocessingSerializer = FakeSerializer
    LocalSerializedTensor = FakeLocalSerializedTensor
    engine_module = FAKE_ENGINE_MODULE
    patched = 0

    @classmethod
    def monkey_patch_torch_reductions(cls):
        cls.patched += 1


def _stream(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        ("model.embed_tokens.weight", torch.randn(16, 8, generator=g)),
        ("model.layers.0.self_attn.q_proj.weight", torch.randn(8, 8, generator=g)),
        ("model.layers.0.self_attn.q_proj.bias", torch.randn(8, generator=g)),
        ("model.layers.0.mlp.up_proj.weight", torch.randn(24, 8, generator=g)),
        ("model.norm.weight", torch.randn(8, generator=g)),
        ("some.int.buffer", torch.arange(6)),
    ]


def _engine(placement=None, tp=1, **kw):
    return SglangRolloutEngine(
        "/nonexistent-hf-dir",
        tp=tp,
        dtype=torch.bfloat16,
        bucket_mb=0.0005,
        placement=placement,
        eos_token_ids=(EOS,),
        api=FakeAPI,
        **kw,
    )


# ---------------------------------------------------------------- single process ----------
@pytest.fixture(autouse=True)
def _restore_process_state():
    """The adapter installs a SIGQUIT handler and may touch env vars: leave pytest as found."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGQUIT, signal.SIGTERM, signal.SIGINT)}
    env = {
        k: os.environ.get(k) for k in ("CUDA_DEVICE_MAX_CONNECTIONS", "NCCL_CUMEM_ENABLE", "PYTORCH_CUDA_ALLOC_CONF")
    }
    yield
    for sig, handler in handlers.items():
        signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
    for key, value in env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def test_start_restores_process_state(tmp_path):
    os.environ["CUDA_DEVICE_MAX_CONNECTIONS"] = "1"
    os.environ.pop("NCCL_CUMEM_ENABLE", None)
    os.environ["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True,max_split_size_mb:64"
    method = mp.get_start_method(allow_none=True)
    eng = _engine(log_dir=str(tmp_path))
    fake = FakeEngine.instances[-1]
    assert fake.kwargs["load_format"] == "dummy" and fake.kwargs["enable_memory_saver"] is True
    assert fake.kwargs["skip_tokenizer_init"] is True and fake.kwargs["dtype"] == "bfloat16"
    assert os.environ["CUDA_DEVICE_MAX_CONNECTIONS"] == "1"
    assert "NCCL_CUMEM_ENABLE" not in os.environ
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True,max_split_size_mb:64"
    assert fake.alloc_conf_seen == "max_split_size_mb:64"  # what the engine processes inherit
    with open(tmp_path / "sglang_engine_rank0.log") as f:
        assert "fake engine: scheduler output" in f.read()
    assert mp.get_start_method(allow_none=True) == method
    assert signal.getsignal(signal.SIGQUIT) is engine_died_handler
    assert fake.kwargs["custom_sigquit_handler"] is engine_died_handler
    with pytest.raises(RuntimeError, match=r"rank 0 died.*sglang_engine_rank0\.log"):
        engine_died_handler()
    eng.shutdown()
    assert fake.calls[-1] == "shutdown" and fake.shutdown_kills[0] is not _kill_everything
    assert FAKE_ENGINE_MODULE.kill_process_tree is _kill_everything  # restored
    eng.shutdown()  # idempotent


def _preemption_handler(signum, frame):  # stands in for the trainer's PreemptionFlag
    pass


class _LoopEngine(FakeEngine):
    """The first request creates an asyncio loop that takes SIGTERM, as SGLang's tokenizer manager does."""

    def flush_cache(self):
        import asyncio

        if not hasattr(self, "tokenizer_manager"):
            self.tokenizer_manager = types.SimpleNamespace(event_loop=asyncio.new_event_loop())
            self.tokenizer_manager.event_loop.add_signal_handler(signal.SIGTERM, lambda: None)
        return super().flush_cache()


def test_start_takes_sigterm_back_from_the_engine_loop(tmp_path, monkeypatch):
    signal.signal(signal.SIGTERM, _preemption_handler)
    monkeypatch.setattr(FakeAPI, "Engine", _LoopEngine)
    eng = _engine(log_dir=str(tmp_path))
    loop = FakeEngine.instances[-1].tokenizer_manager.event_loop
    assert signal.getsignal(signal.SIGTERM) is _preemption_handler
    assert not loop._signal_handlers  # the loop no longer thinks it owns SIGTERM
    eng.shutdown()
    loop.close()


def test_failed_start_still_restores_signal_handlers(tmp_path, monkeypatch):
    signal.signal(signal.SIGTERM, _preemption_handler)
    sigquit = signal.getsignal(signal.SIGQUIT)

    def broken_engine(**kwargs):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGQUIT, lambda *a: None)
        raise OSError("no GPU memory left")

    monkeypatch.setattr(FakeAPI, "Engine", broken_engine)
    with pytest.raises(RuntimeError, match=r"starting the SGLang engine on rank 0 failed: no GPU memory left"):
        _engine(log_dir=str(tmp_path))
    assert signal.getsignal(signal.SIGTERM) is _preemption_handler
    assert signal.getsignal(signal.SIGQUIT) is sigquit


def test_sync_generate_sleep_cycle():
    eng = _engine()
    fake = FakeEngine.instances[-1]
    sp = SamplingParams(temperature=1.0, max_new_tokens=4)
    with pytest.raises(RuntimeError, match="before a weight sync"):
        eng.generate([[5, 6]], sp, n=2)
    patched = FakeAPI.patched
    eng.update_weights(_stream())
    assert FakeAPI.patched > patched  # monkey_patch_torch_reductions before serializing
    for name, t in _stream():
        got = fake.weights[name][0]
        assert got.dtype == (torch.bfloat16 if t.is_floating_point() else t.dtype)
        assert torch.equal(got, t.to(got.dtype))
    n_updates = fake.calls.count("update_weights_from_tensor")
    assert n_updates > 2  # several buckets (bucket_mb tiny)
    assert fake.calls[1:3] == ["begin_weight_update", "update_weights_from_tensor"]
    assert fake.calls[-2:] == ["end_weight_update", "flush_cache"]
    samples = eng.generate([[5, 6], [9]], sp, n=2)
    assert [(s.prompt_index, s.sample_index) for s in samples] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert samples[0].finish_reason == "stop" and samples[0].response_ids[-1] == EOS
    assert samples[0].logprobs == [-0.5] * len(samples[0].response_ids)
    for _ in range(3):
        fake.calls.clear()
        eng.sleep()
        assert fake.calls == ["release:" + ",".join(MEMORY_TAGS)]
        eng.sleep()  # already asleep: nothing released twice
        with pytest.raises(RuntimeError, match="before a weight sync"):
            eng.generate([[5]], sp, n=1)
        eng.update_weights(_stream(1))
        assert fake.calls[1:3] == ["resume:weights", "begin_weight_update"]
        with pytest.raises(RuntimeError, match="asleep: call wake"):
            eng.generate([[5]], sp, n=1)
        eng.wake()
        assert fake.calls[-1] == "resume:kv_cache,cuda_graph"
        eng.generate([[5]], sp, n=1)
        assert torch.equal(fake.weights["model.norm.weight"][0], _stream(1)[4][1].to(torch.bfloat16))
    eng.shutdown()


def test_refusals_raise_with_call_name():
    eng = _engine()
    FakeEngine.refuse_update = True
    try:
        with pytest.raises(RuntimeError, match="update_weights_from_tensor.*refused: boom"):
            eng.update_weights(_stream())
    finally:
        FakeEngine.refuse_update = False
    fake = FakeEngine.instances[-1]
    assert fake.session is False  # session closed after the failure
    eng.update_weights(_stream())
    with pytest.raises(RuntimeError, match="begin_weight_update.*refused"):
        fake.session = True
        eng.update_weights(_stream())
    eng.shutdown()


def test_tensor_mode_uses_local_serialized_tensor():
    eng = _engine(sync_mode="tensor")
    eng.update_weights(_stream())
    fake = FakeEngine.instances[-1]
    assert torch.equal(fake.weights["model.layers.0.mlp.up_proj.weight"][0], _stream()[3][1].to(torch.bfloat16))
    eng.shutdown()


def test_helpers():
    assert check_result("x", (True, "ok")) == (True, "ok")
    assert check_result("x", None) == (True, "")
    assert check_result("x", types.SimpleNamespace(success=True, message="m")) == (True, "m")
    with pytest.raises(RuntimeError, match="SGLang flush_cache refused: busy"):
        check_result("flush_cache", types.SimpleNamespace(success=False, message="busy"))
    with pytest.raises(RuntimeError, match="refused: nope"):
        check_result("end_weight_update", [False, "nope"])
    with pytest.raises(RuntimeError, match="unexpected result"):
        check_result("x", 42)
    assert strip_expandable_segments("expandable_segments:True") is None
    assert strip_expandable_segments("a:1, expandable_segments:True,b:2") == "a:1,b:2"
    check_sglang_version("0.5.23")
    check_sglang_version("0.5.23.post2")
    for bad in ("0.5.22", "0.5.24", "0.4.9", "1.0.0"):
        with pytest.raises(UserError, match=r"not supported.*pip install -e \.\[sglang\]"):
            check_sglang_version(bad)
    out = parse_output(
        {
            "output_ids": [7, 2],
            "meta_info": {
                "finish_reason": {"type": "stop", "matched": 2},
                "output_token_logprobs": [(-1.0, 7, None), (-2.0, 2, None)],
            },
        },
        3,
        1,
    )
    assert (out.prompt_index, out.sample_index, out.response_ids, out.finish_reason, out.logprobs) == (
        3,
        1,
        [7, 2],
        "stop",
        [-1.0, -2.0],
    )
    with pytest.raises(RuntimeError, match="aborted"):
        parse_output({"output_ids": [], "meta_info": {"finish_reason": {"type": "abort", "message": "oom"}}}, 0, 0)
    assert ENGINE_MODULE_PATCHED == "kill_process_tree"


def test_missing_sglang_is_a_user_error(monkeypatch):
    import builtins

    from sppo_megatron.rollout.sglang.contract import SglangAPI

    real_import = builtins.__import__

    def no_sglang(name, *args, **kwargs):
        if name == "sglang" or name.startswith("sglang."):
            raise ImportError("No module named 'sglang'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sglang)
    with pytest.raises(UserError, match=r"pip install -e \.\[sglang\].*docker/"):
        SglangAPI()


# ---------------------------------------------------------------- two gloo ranks ----------
def _two_ranks():
    from sppo_megatron.platform.distributed import init_distributed
    from sppo_megatron.rollout.base import make_placement

    init_distributed(1, 1, seed=3)
    rank = torch.distributed.get_rank()
    results = {}
    # one engine with TP=2 hosted by rank 0: both ranks send their copy of every bucket
    eng = _engine(make_placement(2), tp=2)
    eng.update_weights(_stream())
    sp = SamplingParams(temperature=1.0, max_new_tokens=3)
    results["tp2"] = [(s.prompt_index, s.sample_index, s.response_ids) for s in eng.generate([[5], [6], [7]], sp, n=2)]
    if rank == 0:
        fake = FakeEngine.instances[-1]
        for name, t in _stream():
            assert len(fake.weights[name]) == 2
            for per_rank in fake.weights[name]:
                assert torch.equal(per_rank, t.to(per_rank.dtype))
    else:
        assert eng.engine is None
    eng.sleep()
    eng.update_weights(_stream(2))
    eng.shutdown()
    # two engines (TP=1), one per rank: prompts split, results gathered in order
    eng = _engine(make_placement(1), tp=1)
    eng.update_weights(_stream())
    results["tp1"] = [(s.prompt_index, s.sample_index, s.response_ids) for s in eng.generate([[5], [6], [7]], sp, n=2)]
    results["prompts_here"] = sum(c == "generate" for c in FakeEngine.instances[-1].calls)
    eng.shutdown()
    return results


def test_two_ranks_tp2_and_tp1():
    r0, r1 = run_ranks(_two_ranks, 2, env={"CUDA_VISIBLE_DEVICES": ""})  # gloo on CPU everywhere
    assert r0["tp2"] == r1["tp2"] == r0["tp1"] == r1["tp1"]
    assert [(p, j) for p, j, _ in r0["tp2"]] == [(p, j) for p in range(3) for j in range(2)]
    assert r0["prompts_here"] == r1["prompts_here"] == 1  # each engine generated its share
