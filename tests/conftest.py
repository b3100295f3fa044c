"""Shared pytest setup: GPU tests skip cleanly on machines without CUDA; fixtures several modules use."""

import pytest
import torch


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


@pytest.fixture
def run_files(tmp_path):
    """Overrides naming a model directory, a train file and an output dir that exist (for config tests)."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    data = tmp_path / "train.parquet"
    data.write_bytes(b"")
    return [f"model.path={model}", f"data.train_files=[{data}]", f"trainer.output_dir={tmp_path / 'out'}"]
