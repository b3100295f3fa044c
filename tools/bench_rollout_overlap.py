"""Step time and tokens/s of the three rollout placements on the same model, data and seeds:
colocated (every rank trains and generates), separate (rollout.num_ranks ranks generate, the
others train) and separate + rollout.off_policy_steps=1 (generation of step t+1 overlaps the
training of step t).

    python tools/bench_rollout_overlap.py [--train-ranks 2] [--rollout-ranks 2] [--steps 6]
        [--assets DIR] [--out DIR] [key=value ...]

Each mode is one `sppo-train` run under torchrun on train + rollout ranks (colocated uses them all
to train and generate). Without --assets the CPU demo's tiny assets are built in --out. key=value
arguments go to every run (e.g. a real model and `rollout.engine=sglang` on GPUs; see
docs/performance.md). Printed per mode, over the steps after the first (warm-up): median
timing/step_s, median perf/tokens_per_s, the training ranks' median wait for samples
(timing/gen_s), the rollout ranks' median generation time (timing/gen_busy_s), and from
timeline.jsonl the share of generation time spent while training ran.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from sppo_megatron.platform.distributed import free_port  # noqa: E402
from tools.make_tiny_assets import build_and_convert  # noqa: E402


def build_assets(out: str) -> str:
    if not os.path.exists(os.path.join(out, "megatron", "sppo_checkpoint.json")):
        build_and_convert(out)
    return out


def tiny_overrides(assets: str) -> list:
    return [
        f"model.path={assets}/megatron/hf",
        f"model.megatron_ckpt={assets}/megatron",
        f"data.train_files=[{assets}/data/train.parquet]",
        "data.train_batch_size=8",
        "data.max_prompt_length=32",
        "data.max_response_length=16",
        "rollout.engine=hf",
        "rollout.n=4",
        "train.mini_batch_size=4",
        "train.micro_batch_size=4",
        "optim.lr=1e-4",
    ]


def run(mode: str, nproc: int, overrides: list, out: str) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        "-m",
        "sppo_megatron.train",
        *overrides,
        f"trainer.output_dir={out}",
        "trainer.resume=none",
        "trainer.overwrite=true",
        "trainer.val_before_train=false",
        "trainer.test_freq=0",
    ]
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "PYTHONWARNINGS": "ignore"}, stdout=subprocess.DEVNULL)
    with open(os.path.join(out, "metrics.jsonl"), encoding="utf-8") as fh:
        steps = [m for m in map(json.loads, fh) if m["step"] > 1]
    row = {"mode": mode}
    for key in ("timing/step_s", "perf/tokens_per_s", "timing/gen_s", "timing/gen_busy_s"):
        values = [m[key] for m in steps if key in m]
        row[key] = statistics.median(values) if values else float("nan")
    row["overlap"] = overlap_share(os.path.join(out, "timeline.jsonl"))
    return row


def overlap_share(path: str) -> float:
    """Share of the rollout ranks' generation time (after step 1) during which training ran."""
    if not os.path.exists(path):
        return float("nan")
    with open(path, encoding="utf-8") as fh:
        events = [json.loads(line) for line in fh]
    train = []  # the union of the training ranks' intervals
    for a, b in sorted((e["start"], e["end"]) for e in events if e["phase"] == "train"):
        if train and a <= train[-1][1]:
            train[-1] = (train[-1][0], max(train[-1][1], b))
        else:
            train.append((a, b))
    busy = inside = 0.0
    for e in events:
        if e["phase"] != "generate" or e["step"] < 2:
            continue
        busy += e["end"] - e["start"]
        inside += sum(max(0.0, min(e["end"], b) - max(e["start"], a)) for a, b in train)
    return inside / busy if busy else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-ranks", type=int, default=2)
    parser.add_argument("--rollout-ranks", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument(
        "--assets", help="tiny assets directory (tools/make_tiny_assets.py); omit with a model in key=value"
    )
    parser.add_argument("--out", default=None, help="where the runs go (default: a temporary directory)")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="bench_rollout_overlap_")
    base = list(args.overrides)
    if not any(o.startswith("model.path=") for o in base):
        base = tiny_overrides(build_assets(args.assets or os.path.join(out, "assets"))) + base
    base.append(f"trainer.total_steps={args.steps}")
    world = args.train_ranks + args.rollout_ranks
    separate = ["rollout.placement=separate", f"rollout.num_ranks={args.rollout_ranks}"]
    modes = [
        ("colocated", []),
        ("separate", separate),
        ("separate+off_policy_1", separate + ["rollout.off_policy_steps=1"]),
    ]
    rows = [run(name, world, base + extra, os.path.join(out, name)) for name, extra in modes]
    print(
        f"{world} ranks ({args.train_ranks} train + {args.rollout_ranks} rollout when separate), "
        f"{args.steps} steps, medians over steps 2..{args.steps}"
    )
    print(f"{'mode':<24}{'step_s':>9}{'tokens/s':>10}{'wait_gen_s':>12}{'gen_busy_s':>12}{'overlap':>9}")
    for r in rows:
        print(
            f"{r['mode']:<24}{r['timing/step_s']:>9.3f}{r['perf/tokens_per_s']:>10.1f}{r['timing/gen_s']:>12.3f}"
            f"{r['timing/gen_busy_s']:>12.3f}{r['overlap']:>9.0%}"
        )


if __name__ == "__main__":
    main()
