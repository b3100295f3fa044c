"""`sppo-convert` for the mixture-of-experts families: HF -> Megatron -> HF bit-exact, and
`verify` (megatron logits vs transformers, fp32) within 1e-5, for each of MOE_ARCHS.

One spawned single-rank process converts every family both ways and verifies it (conversion
starts a process group, which must not leak into pytest).
"""

from __future__ import annotations

import os

import pytest
import torch

from sppo_megatron.testing.tiny import MOE_ARCHS
from tests.multirank import run_ranks
from tests.tiny_models import convert as _run
from tests.tiny_models import hf_state_dict, moe_models_root

pytestmark = pytest.mark.slow


def _body(root, work):
    codes = {}
    for arch in MOE_ARCHS:
        src = os.path.join(root, arch)
        mg, hf = os.path.join(work, arch, "mg"), os.path.join(work, arch, "hf")
        codes[(arch, "h2m")] = _run(["hf-to-megatron", "--hf", src, "--out", mg])
        codes[(arch, "verify")] = _run(["verify", "--hf", src, "--ckpt", mg, "--atol", "1e-5"])
        codes[(arch, "m2h")] = _run(["megatron-to-hf", "--ckpt", mg, "--out", hf])
    # a checkpoint verified against other weights (same family, another seed) must fail
    other = os.path.join(work, "qwen3-moe-seed1")
    codes["h2m-other"] = _run(["hf-to-megatron", "--hf", os.path.join(other, "hf"), "--out", os.path.join(other, "mg")])
    codes["verify-other"] = _run(
        ["verify", "--hf", os.path.join(root, "qwen3-moe"), "--ckpt", os.path.join(other, "mg"), "--atol", "1e-5"]
    )
    return codes


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from sppo_megatron.testing.tiny import make_tiny_hf_model

    root = moe_models_root(tmp_path_factory)
    work = str(tmp_path_factory.mktemp("moe_convert"))
    make_tiny_hf_model("qwen3-moe", os.path.join(work, "qwen3-moe-seed1", "hf"), seed=1)
    return root, work, run_ranks(_body, 1, root, work, timeout=300)[0]


@pytest.mark.parametrize("arch", MOE_ARCHS)
def test_round_trip_bit_exact_and_verify_within_1e5(converted, arch):
    root, work, codes = converted
    assert codes[(arch, "h2m")] == 0 and codes[(arch, "verify")] == 0 and codes[(arch, "m2h")] == 0, codes
    got, want = hf_state_dict(os.path.join(work, arch, "hf")), hf_state_dict(os.path.join(root, arch))
    assert set(got) == set(want), sorted(set(got) ^ set(want))[:5]
    assert any(".experts.3." in k for k in want)  # per-expert HF names, every expert
    for k in want:
        assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), k


def test_verify_fails_on_other_weights(converted):
    codes = converted[2]
    assert codes["h2m-other"] == 0 and codes["verify-other"] == 1
