"""Shared pytest setup: GPU tests skip cleanly on machines without CUDA; a rollout engine's process
left running by the suite fails it; fixtures several modules use."""

import pytest
import torch

from tests.engines import engine_processes

_ENGINES_BEFORE: set = set()


def pytest_sessionstart(session):
    _ENGINES_BEFORE.update(p.pid for p in engine_processes())


def pytest_sessionfinish(session, exitstatus):
    left = [p for p in engine_processes() if p.pid not in _ENGINES_BEFORE]
    if left:
        names = ", ".join(f"{p.pid} {p.name()}" for p in left)
        print(f"\nrollout engine processes left running by the tests: {names}", flush=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory):
    """The CPU demo's assets (tokenizer, arithmetic prompts, warm-started model, Megatron checkpoint)."""
    from tests.tiny_run import build_assets

    return build_assets(str(tmp_path_factory.mktemp("tiny_assets")))


@pytest.fixture(scope="session")
def two_step_run(tiny_assets, tmp_path_factory):
    """A finished run of `tiny_run.TWO_STEP_RUN` (2 steps, no validation, checkpoints of steps 1
    and 2, hf/ export), shared by the e2e and fault tests: read it, or copy it before changing it."""
    from tests.tiny_run import TWO_STEP_RUN, base_overrides, train

    out = tmp_path_factory.mktemp("two_step_run") / "run"
    train(base_overrides(tiny_assets, str(out)) + TWO_STEP_RUN)
    return out


@pytest.fixture
def run_files(tmp_path):
    """Overrides naming a model directory, a train file and an output dir that exist (for config tests)."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    data = tmp_path / "train.parquet"
    data.write_bytes(b"")
    return [f"model.path={model}", f"data.train_files=[{data}]", f"trainer.output_dir={tmp_path / 'out'}"]
