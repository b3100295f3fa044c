"""Shared pytest setup: GPU tests skip cleanly on machines without CUDA."""

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
