"""Build the embedded CPU demo's assets with no network: a tokenizer, prompts and a small model.

    python tools/make_tiny_assets.py --out DIR [--reward-model]

writes
    DIR/model/             a Qwen2-architecture HF checkpoint (config, safetensors, tokenizer with
                           a chat template), briefly warm-started by supervised training on the
                           train problems so it answers some problems right (and has headroom)
    DIR/data/train.parquet synthetic "a+b" prompts in the verl schema (data_source "arith")
    DIR/data/test.parquet  held-out problems disjoint from train
    DIR/reward_model/      with --reward-model: a Qwen2 sequence classifier (one label) trained on
                           the train problems to score a correct sum above wrong ones (near misses
                           and the policy's own mistakes), for reward.source=reward_model
                           (examples/tiny_cpu_rm; how and why: tools/tiny_reward_model.py)

Everything is seeded: the same command gives the same files.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from typing import Dict, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from sppo_megatron.testing.tiny import char_tokenizer, tiny_config, tiny_model  # noqa: E402

CHARS = "0123456789+="
MAX_OPERAND = 49
DATA_SOURCE = "arith"


def split_problems(seed: int, num_test: int) -> Tuple[List[Tuple[int, int]], List[Tuple[int, int]]]:
    pairs = [(a, b) for a in range(MAX_OPERAND + 1) for b in range(MAX_OPERAND + 1)]
    random.Random(seed).shuffle(pairs)
    return pairs[num_test:], pairs[:num_test]


def to_rows(pairs: List[Tuple[int, int]], split: str) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "data_source": DATA_SOURCE,
                "prompt": [{"role": "user", "content": f"{a}+{b}="}],
                "ability": "arithmetic",
                "reward_model": {"style": "rule", "ground_truth": str(a + b)},
                "extra_info": {"split": split, "index": i},
            }
            for i, (a, b) in enumerate(pairs)
        ]
    )


def build_model(tokenizer, hidden: int, layers: int, seed: int):
    """A tied Qwen2 sized for the demo (HF's own initialisation, seeded)."""
    config = tiny_config(
        "qwen2",
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        rope_theta=10000.0,
    )  # not tiny_config's 1e6: the demo's published figures used 10000
    return tiny_model(config, seed)


def warm_start(
    model, tokenizer, pairs, steps: int, batch_size: int, lr: float, seed: int, echo: float = 0.0, progress=None
) -> float:
    """Supervised training on `prompt -> answer<eos>` (loss on the answer only). `echo` > 0 adds,
    with that weight, a loss that each position's last hidden state still tells its own token
    (through a linear head dropped afterwards): the reward model's backbone needs it (see
    tools/tiny_reward_model.py), the policy does not. `progress(step, loss)` follows each step."""
    gen = torch.Generator().manual_seed(seed)
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": f"{a}+{b}="}], add_generation_prompt=True, tokenize=False
        )
        for a, b in pairs
    ]
    seqs, masks = [], []
    for (a, b), prompt in zip(pairs, prompts):
        p = tokenizer.encode(prompt, add_special_tokens=False)
        r = tokenizer.encode(str(a + b), add_special_tokens=False) + [tokenizer.eos_token_id]
        seqs.append(p + r)
        masks.append([0] * len(p) + [1] * len(r))
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), tokenizer.pad_token_id)
    loss_mask = torch.zeros((len(seqs), width))
    for i, (s, m) in enumerate(zip(seqs, masks)):
        ids[i, : len(s)] = torch.tensor(s)
        loss_mask[i, : len(m)] = torch.tensor(m, dtype=torch.float)
    echo_head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size) if echo else None
    params = list(model.parameters()) + (list(echo_head.parameters()) if echo else [])
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    loss = torch.tensor(0.0)
    for step in range(steps):
        idx = torch.randint(0, len(seqs), (batch_size,), generator=gen)
        hidden = model.model(input_ids=ids[idx]).last_hidden_state
        logits = model.lm_head(hidden)[:, :-1]
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[idx, 1:], reduction="none")
        mask = loss_mask[idx, 1:]
        loss = (nll * mask).sum() / mask.sum()
        if echo:
            real = (ids[idx] != tokenizer.pad_token_id).float()
            own = torch.nn.functional.cross_entropy(echo_head(hidden).transpose(1, 2), ids[idx], reduction="none")
            loss = loss + echo * (own * real).sum() / real.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if progress is not None:
            progress(step, loss.detach())
    model.eval()
    return float(loss.detach())


@torch.no_grad()
def greedy_accuracy(model, tokenizer, pairs) -> float:
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": f"{a}+{b}="}], add_generation_prompt=True, tokenize=False
        )
        for a, b in pairs
    ]
    correct = 0
    for length in sorted({len(p) for p in prompts}):  # equal-length prompts batch without padding
        rows = [i for i, p in enumerate(prompts) if len(p) == length]
        batch = torch.tensor([tokenizer.encode(prompts[i], add_special_tokens=False) for i in rows])
        out = model.generate(
            batch,
            attention_mask=torch.ones_like(batch),
            max_new_tokens=4,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        for i, row in zip(rows, out[:, batch.shape[1] :]):
            text = tokenizer.decode(row, skip_special_tokens=True)
            correct += text == str(sum(pairs[i]))
    return correct / len(pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output directory (model/ and data/ are written under it)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-test", type=int, default=200, help="held-out problems")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--warm-steps", type=int, default=300, help="supervised warm-start steps")
    parser.add_argument("--warm-batch", type=int, default=64)
    parser.add_argument("--warm-lr", type=float, default=3e-3)
    parser.add_argument("--reward-model", action="store_true", help="also train DIR/reward_model (see above)")
    parser.add_argument(
        "--rm-lm-steps",
        type=int,
        default=1500,
        help="further supervised steps of the policy copy the reward model is built on",
    )
    parser.add_argument("--rm-lm-lr", type=float, default=1.5e-3)
    parser.add_argument(
        "--rm-echo",
        type=float,
        default=2.0,
        help="weight of the loss that keeps each position's own token in that copy's last states",
    )
    parser.add_argument("--rm-layers", type=int, default=2, help="fresh layers stacked on it")
    parser.add_argument("--rm-steps", type=int, default=800, help="reward-model training steps (64 pairs each)")
    parser.add_argument("--rm-lr", type=float, default=1e-3)
    parser.add_argument("--rm-dense", type=float, default=1.0, help="weight of the per-position loss")
    args = parser.parse_args()

    start = time.time()
    tokenizer = char_tokenizer(CHARS)
    train, test = split_problems(args.seed, args.num_test)
    os.makedirs(os.path.join(args.out, "data"), exist_ok=True)
    to_rows(train, "train").to_parquet(os.path.join(args.out, "data", "train.parquet"))
    to_rows(test, "test").to_parquet(os.path.join(args.out, "data", "test.parquet"))

    model = build_model(tokenizer, args.hidden, args.layers, args.seed)
    loss = warm_start(model, tokenizer, train, args.warm_steps, args.warm_batch, args.warm_lr, args.seed)
    model_dir = os.path.join(args.out, "model")
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    acc = greedy_accuracy(model, tokenizer, test)
    summary = {
        "train_problems": len(train),
        "test_problems": len(test),
        "warm_start_loss": round(loss, 4),
        "held_out_greedy_accuracy": round(acc, 4),
    }
    if args.reward_model:
        from tools.tiny_reward_model import Progress, train_reward_model  # only for --reward-model

        def more_sums(lm, steps: int, seed: int) -> None:
            warm_start(
                lm,
                tokenizer,
                train,
                steps,
                args.warm_batch,
                args.rm_lm_lr,
                seed,
                echo=args.rm_echo,
                progress=Progress("reward model backbone", steps),
            )

        rm_start = time.time()
        rm, rm_tokenizer, rm_accuracy = train_reward_model(
            model,
            tokenizer,
            more_sums,
            CHARS,
            train,
            test,
            args.rm_lm_steps,
            args.rm_layers,
            args.rm_steps,
            args.rm_lr,
            args.rm_dense,
            args.seed,
        )
        rm.save_pretrained(os.path.join(args.out, "reward_model"))
        rm_tokenizer.save_pretrained(os.path.join(args.out, "reward_model"))
        summary.update({f"reward_model_{k}_pair_accuracy": round(v, 4) for k, v in rm_accuracy.items()})
        summary["reward_model_seconds"] = round(time.time() - rm_start, 1)
    summary["seconds"] = round(time.time() - start, 1)
    with open(os.path.join(args.out, "assets.json"), "w") as fh:
        json.dump(summary, fh, indent=2)
    print(f"tiny assets in {args.out}: " + ", ".join(f"{k}={v}" for k, v in summary.items()))


def build_and_convert(out: str, *args: str, env: Optional[Dict[str, str]] = None, capture: bool = False) -> None:
    """This script on OUT (with `args`), then `sppo-convert hf-to-megatron` of OUT/model into
    OUT/megatron, each in a fresh process: the assets a tiny `sppo-train` run needs (the tests,
    the benches)."""
    commands = [
        [sys.executable, os.path.abspath(__file__), "--out", out, *args],
        [
            sys.executable,
            "-m",
            "sppo_megatron.cli.convert",
            "hf-to-megatron",
            "--hf",
            f"{out}/model",
            "--out",
            f"{out}/megatron",
        ],
    ]
    for command in commands:
        subprocess.run(command, check=True, capture_output=capture, env=env)


if __name__ == "__main__":
    main()
