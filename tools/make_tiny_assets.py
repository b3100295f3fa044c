"""Build the embedded CPU demo's assets with no network: a tokenizer, prompts and a small model.

    python tools/make_tiny_assets.py --out DIR [--reward-model]

writes
    DIR/model/             a Qwen2-architecture HF checkpoint (config, safetensors, tokenizer with
                           a chat template), briefly warm-started by supervised training on the
                           train problems so it answers some problems right (and has headroom)
    DIR/data/train.parquet synthetic "a+b" prompts in the verl schema (data_source "arith")
    DIR/data/test.parquet  held-out problems disjoint from train
    DIR/reward_model/      with --reward-model: a Qwen2 sequence classifier (one label) trained
                           Bradley-Terry style on the train problems to score a correct sum above
                           a wrong one (near misses, other numbers, garbage), for
                           reward.source=reward_model (examples/tiny_cpu_rm)

Everything is seeded: the same command gives the same files.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from typing import List, Tuple

import pandas as pd
import torch

from sppo_megatron.testing.tiny import char_tokenizer, tiny_config, tiny_model

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
    config = tiny_config("qwen2", vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, max_position_embeddings=64, tie_word_embeddings=True,
                         rope_theta=10000.0)  # not tiny_config's 1e6: the demo's published figures used 10000
    return tiny_model(config, seed)


def warm_start(model, tokenizer, pairs, steps: int, batch_size: int, lr: float, seed: int) -> float:
    """Supervised training on `prompt -> answer<eos>` (loss on the answer only)."""
    gen = torch.Generator().manual_seed(seed)
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": f"{a}+{b}="}], add_generation_prompt=True, tokenize=False) for a, b in pairs]
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
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    loss = torch.tensor(0.0)
    for _ in range(steps):
        idx = torch.randint(0, len(seqs), (batch_size,), generator=gen)
        logits = model(input_ids=ids[idx]).logits[:, :-1]
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[idx, 1:], reduction="none")
        mask = loss_mask[idx, 1:]
        loss = (nll * mask).sum() / mask.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return float(loss.detach())


def wrong_answer(a: int, b: int, rng: random.Random) -> str:
    """A response that is not the sum: the mistakes a small policy makes, roughly."""
    right = a + b
    kind = rng.randrange(5)
    if kind == 0:
        wrong = right + rng.choice([-10, -2, -1, 1, 2, 10])
    elif kind == 1:
        wrong = rng.randrange(0, 2 * MAX_OPERAND + 1)
    elif kind == 2:
        return str(right)[::-1] if right >= 10 and str(right)[::-1] != str(right) else str(right) + str(rng.randrange(10))
    elif kind == 3:
        return "".join(rng.choice(CHARS) for _ in range(rng.randrange(0, 5)))
    else:
        return str(right)[:-1] if right >= 10 else str(right + 1)
    return str(wrong) if wrong != right and wrong >= 0 else str(right + 3)


@torch.no_grad()
def sampled_mistakes(model, tokenizer, pairs, samples: int, seed: int) -> dict:
    """(a, b) -> the policy's wrong answers sampled at T=1: the mistakes SPPO will see first."""
    torch.manual_seed(seed)
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": f"{a}+{b}="}], add_generation_prompt=True,
                                             tokenize=False) for a, b in pairs]
    mistakes: dict = {}
    for length in sorted({len(p) for p in prompts}):  # equal-length prompts batch without padding
        rows = [i for i, p in enumerate(prompts) if len(p) == length]
        batch = torch.tensor([tokenizer.encode(prompts[i], add_special_tokens=False) for i in rows])
        out = model.generate(batch, attention_mask=torch.ones_like(batch), max_new_tokens=6, do_sample=True,
                             temperature=1.0, top_k=0, num_return_sequences=samples,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        for k, row in enumerate(out[:, batch.shape[1]:]):
            a, b = pairs[rows[k // samples]]
            text = tokenizer.decode(row, skip_special_tokens=True)
            if text != str(a + b):
                mistakes.setdefault((a, b), []).append(text)
    return mistakes


def train_reward_model(tokenizer, policy, policy_dir: str, pairs, test_pairs, steps: int, batch_size: int, lr: float,
                       seed: int):
    """A one-label Qwen2 classifier, started from the warm-started policy's transformer (it already
    knows some sums) with a fresh score head, trained on (correct, wrong) responses of the train
    problems with the Bradley-Terry loss -log sigmoid(s_correct - s_wrong); half the wrong ones
    are the policy's own sampled mistakes. Returns it and its pair accuracy on train and
    held-out problems."""
    from transformers import Qwen2ForSequenceClassification

    rng = random.Random(seed)
    mistakes = sampled_mistakes(policy, tokenizer, rng.sample(pairs, 800) + list(test_pairs), 4, seed)
    model = Qwen2ForSequenceClassification.from_pretrained(policy_dir, num_labels=1)

    def encode(a: int, b: int, response: str) -> List[int]:  # as the oracle renders it (its chat template)
        messages = [{"role": "user", "content": f"{a}+{b}="}, {"role": "assistant", "content": response}]
        return tokenizer.encode(tokenizer.apply_chat_template(messages, tokenize=False), add_special_tokens=False)

    def scores(rows: List[List[int]]) -> torch.Tensor:
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), tokenizer.pad_token_id)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
        return model(input_ids=ids, attention_mask=(ids != tokenizer.pad_token_id).long()).logits[:, 0]

    def wrong_response(a: int, b: int) -> str:
        own = mistakes.get((a, b))
        return rng.choice(own) if own and rng.random() < 0.5 else wrong_answer(a, b, rng)

    def batch(problems):
        chosen = [rng.choice(problems) for _ in range(batch_size)]
        return ([encode(a, b, str(a + b)) for a, b in chosen], [encode(a, b, wrong_response(a, b)) for a, b in chosen])

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        right, wrong = batch(pairs)
        s = scores(right + wrong)
        loss = -torch.nn.functional.logsigmoid(s[:batch_size] - s[batch_size:]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        accuracy = {}
        sampled = [p for p in test_pairs if p in mistakes]  # the policy's own mistakes on held-out problems
        for name, problems in (("train", pairs), ("held_out", test_pairs), ("held_out_sampled", sampled)):
            wins = []
            for _ in range(4):
                right, wrong = batch(problems)
                s = scores(right + wrong)
                wins.append(float((s[:batch_size] > s[batch_size:]).float().mean()))
            accuracy[name] = sum(wins) / len(wins)
    return model, accuracy


@torch.no_grad()
def greedy_accuracy(model, tokenizer, pairs) -> float:
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": f"{a}+{b}="}], add_generation_prompt=True, tokenize=False) for a, b in pairs]
    correct = 0
    for length in sorted({len(p) for p in prompts}):  # equal-length prompts batch without padding
        rows = [i for i, p in enumerate(prompts) if len(p) == length]
        batch = torch.tensor([tokenizer.encode(prompts[i], add_special_tokens=False) for i in rows])
        out = model.generate(batch, attention_mask=torch.ones_like(batch), max_new_tokens=4, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        for i, row in zip(rows, out[:, batch.shape[1]:]):
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
    parser.add_argument("--rm-steps", type=int, default=150, help="reward-model training steps (64 pairs each)")
    parser.add_argument("--rm-lr", type=float, default=1e-3)
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
    summary = {"train_problems": len(train), "test_problems": len(test), "warm_start_loss": round(loss, 4),
               "held_out_greedy_accuracy": round(acc, 4)}
    if args.reward_model:
        rm, rm_accuracy = train_reward_model(tokenizer, model, model_dir, train, test, args.rm_steps, 64, args.rm_lr,
                                             args.seed)
        rm.save_pretrained(os.path.join(args.out, "reward_model"))
        tokenizer.save_pretrained(os.path.join(args.out, "reward_model"))
        summary.update({f"reward_model_{k}_pair_accuracy": round(v, 4) for k, v in rm_accuracy.items()})
    summary["seconds"] = round(time.time() - start, 1)
    with open(os.path.join(args.out, "assets.json"), "w") as fh:
        json.dump(summary, fh, indent=2)
    print(f"tiny assets in {args.out}: " + ", ".join(f"{k}={v}" for k, v in summary.items()))


if __name__ == "__main__":
    main()
