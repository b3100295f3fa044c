"""tools/memory_plan.py: the per-rank bytes it predicts follow megatron's rules from the config."""

import json

from sppo_megatron.testing.tiny import make_tiny_hf_model
from tools import memory_plan


def test_plan_counts_each_component(tmp_path, capsys):
    path = make_tiny_hf_model("qwen2", tmp_path / "model")
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"model:\n  path: {path}\n  dtype: fp32\nrollout:\n  engine: hf\n")
    assert memory_plan.main(["--config", str(cfg), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    parts, peaks = got["bytes"], got["peak_bytes"]
    assert parts["grads"] == parts["params"] and parts["optimizer"] == 2 * parts["params"]  # fp32 + Adam
    assert 0 < parts["engine"] <= parts["params"], "the HF engine's copy: the unpadded vocabulary"
    assert 0 < parts["checkpoint_transient"] < parts["params"], "one tensor at a time, not the model"
    assert parts["runtime"] > 100 * 2**20, "an interpreter with torch and megatron-core imported"
    held = sum(parts[k] for k in ("runtime", "params", "grads", "optimizer", "engine"))
    assert parts["weight_grad_transient"] == 2 * parts["checkpoint_transient"], "embedding + LM head, fp32"
    update = held + parts["activations"] + parts["weight_grad_transient"]
    assert peaks == {"update": update, "save": held + parts["checkpoint_transient"]}

    bf16 = json.loads(_run_json(capsys, cfg, "model.dtype=bf16", "parallel.use_distributed_optimizer=false"))
    assert bf16["bytes"]["params"] * 2 == parts["params"] and bf16["bytes"]["optimizer"] == 3 * parts["params"]


def _run_json(capsys, cfg, *overrides):
    assert memory_plan.main(["--config", str(cfg), *overrides, "--json"]) == 0
    return capsys.readouterr().out


def test_bad_config_is_exit_2(tmp_path, capsys):
    assert memory_plan.main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert "memory_plan: error: --config" in capsys.readouterr().err
