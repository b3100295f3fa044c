"""The reward model of the CPU demo examples/tiny_cpu_rm (built by make_tiny_assets.py --reward-model):
a one-label Qwen2 sequence classifier scoring `a+b=<assistant>c<eos>`, trained on the train
problems only, never shown the held-out ones, and reading no ground truth at score time.

Why this shape. To score c the classifier must, at each answer digit, (1) know what a+b has in
that place (the prediction made at the previous position) and (2) compare it with the digit
there. A classifier fine-tuned from the policy with the pair loss alone learns (2) slowly and
judged carries wrong (SPPO then exploited it: docs/performance.md). So:
(1) comes from a copy of the warm-started policy trained further on the train sums (a causal LM
that adds well), with an "echo" loss: each position's last hidden state must still tell its own
token. Without it the LM drops the digit wherever the next token does not depend on it (the
last digit before <eos>), and no layer above can tell `51` from `52` (a linear probe reads that
digit back from the plain backbone's last state 24% of the time, 98% with echo weight 2:
docs/performance.md).
(2) comes from fresh layers stacked on top of it, trained with the score head (and the LM below)
with the Bradley-Terry loss -log sigmoid(s_correct - s_wrong) at the last token plus a dense
binary cross-entropy at every response position ("is the answer right so far?"), which teaches
the digit-wise check far faster than one bit per pair. Its chat template ends the assistant turn
with <eos>, so the last token is always the end marker and a missing or extra digit is visible
there. Negatives are near misses (carry errors, a digit off by one or replaced, a digit dropped
or added, a neighbouring sum, garbage) and the policy's own wrong samples, the mistakes SPPO
sees first.
"""

from __future__ import annotations

import copy
import random
import sys
import time
from typing import Dict, List, Sequence, Tuple

import torch

Problem = Tuple[int, int]
RM_CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% if m['role'] == 'assistant' %}<eos>{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
)
DIGITS = "0123456789"


class Progress:
    """`label: step i/N, loss x, Ts` on stderr about every eighth of a loop: the reward model's
    build runs for minutes, and a silent one looks hung."""

    def __init__(self, label: str, steps: int) -> None:
        self.label, self.steps, self.every, self.start = label, steps, max(1, steps // 8), time.time()

    def __call__(self, step: int, loss: torch.Tensor) -> None:
        if (step + 1) % self.every == 0 or step + 1 == self.steps:
            print(
                f"   {self.label}: step {step + 1}/{self.steps}, loss {float(loss):.4f}, {time.time() - self.start:.0f}s",
                file=sys.stderr,
                flush=True,
            )


def near_miss(a: int, b: int, rng: random.Random, chars: str) -> str:
    """A wrong answer to a+b close to the right one: the mistakes a small adder makes."""
    right = str(a + b)
    digits = list(right)
    kind = rng.randrange(7)
    if kind == 0:  # the carry dropped or added: tens digit off by one, or digit-wise sum mod 10
        no_carry = (a // 10 + b // 10) * 10 + (a % 10 + b % 10) % 10
        wrong = str(no_carry) if no_carry != a + b else str(a + b + rng.choice([-10, 10]))
    elif kind == 1:  # one digit off by one
        i = rng.randrange(len(digits))
        digits[i] = str((int(digits[i]) + rng.choice([-1, 1])) % 10)
        wrong = "".join(digits)
    elif kind == 2:  # one digit replaced
        i = rng.randrange(len(digits))
        digits[i] = rng.choice([d for d in DIGITS if d != digits[i]])
        wrong = "".join(digits)
    elif kind == 3:  # a digit dropped or added
        if len(digits) > 1 and rng.random() < 0.5:
            del digits[rng.randrange(len(digits))]
        else:
            digits.insert(rng.randrange(len(digits) + 1), rng.choice(DIGITS))
        wrong = "".join(digits)
    elif kind == 4:  # the sum of a neighbouring problem
        wrong = str(max(0, a + b + rng.choice([-11, -10, -9, -2, -1, 1, 2, 9, 10, 11])))
    elif kind == 5:  # the right answer followed by junk
        wrong = right + rng.choice(chars)
    else:  # garbage
        wrong = "".join(rng.choice(chars) for _ in range(rng.randrange(0, 6)))
    return wrong if wrong != right else right + "0"


def prefix_labels(a: int, b: int, response: str) -> List[float]:
    """Per response token and the closing <eos>: 1 while the response is a prefix of the answer."""
    want, got = list(str(a + b)) + [None], list(response) + [None]
    labels, ok = [], True
    for i, token in enumerate(got):
        ok = ok and i < len(want) and want[i] == token
        labels.append(float(ok))
    return labels


@torch.no_grad()
def sampled_mistakes(
    model, tokenizer, problems: Sequence[Problem], samples: int, seed: int
) -> Dict[Problem, List[str]]:
    """(a, b) -> the policy's wrong answers sampled at T=1: the mistakes SPPO will see first."""
    torch.manual_seed(seed)
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": f"{a}+{b}="}], add_generation_prompt=True, tokenize=False
        )
        for a, b in problems
    ]
    mistakes: Dict[Problem, List[str]] = {}
    for length in sorted({len(p) for p in prompts}):  # equal-length prompts batch without padding
        rows = [i for i, p in enumerate(prompts) if len(p) == length]
        batch = torch.tensor([tokenizer.encode(prompts[i], add_special_tokens=False) for i in rows])
        out = model.generate(
            batch,
            attention_mask=torch.ones_like(batch),
            max_new_tokens=6,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            num_return_sequences=samples,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        for k, row in enumerate(out[:, batch.shape[1] :]):
            a, b = problems[rows[k // samples]]
            text = tokenizer.decode(row, skip_special_tokens=True)
            if text != str(a + b):
                mistakes.setdefault((a, b), []).append(text)
    return mistakes


def stacked_classifier(lm, extra_layers: int, seed: int):
    """A Qwen2ForSequenceClassification (one label): `lm`'s embeddings, layers and final norm, with
    `extra_layers` freshly initialised layers between its last layer and the norm."""
    from transformers import Qwen2Config, Qwen2ForSequenceClassification

    config = lm.config.to_dict()
    for key in ("architectures", "layer_types", "num_hidden_layers", "id2label", "label2id"):
        config.pop(key, None)
    torch.manual_seed(seed)
    model = Qwen2ForSequenceClassification(
        Qwen2Config(**config, num_labels=1, num_hidden_layers=lm.config.num_hidden_layers + extra_layers)
    )
    state = {k[len("model.") :]: v for k, v in lm.state_dict().items() if k.startswith("model.")}
    missing = model.model.load_state_dict(state, strict=False).missing_keys
    assert all(k.startswith("layers.") for k in missing), missing
    return model


class RewardModelTrainer:
    """Builds and trains the reward model (see the module docstring); `pair_accuracy` measures it."""

    def __init__(self, tokenizer, chars: str, train: Sequence[Problem], own: Dict[Problem, List[str]], seed: int):
        self.tokenizer, self.chars, self.train, self.own = tokenizer, chars, list(train), own
        self.rng = random.Random(seed)

    def encode(self, a: int, b: int, response: str) -> List[int]:
        """The token ids the oracle feeds the reward model (its own chat template)."""
        messages = [{"role": "user", "content": f"{a}+{b}="}, {"role": "assistant", "content": response}]
        return self.tokenizer.encode(
            self.tokenizer.apply_chat_template(messages, tokenize=False), add_special_tokens=False
        )

    def wrong(self, a: int, b: int) -> str:
        own = self.own.get((a, b))
        return self.rng.choice(own) if own and self.rng.random() < 0.5 else near_miss(a, b, self.rng, self.chars)

    def scores(self, model, rows: List[List[int]]) -> torch.Tensor:
        """Per row, the score at every position (padding right): (len(rows), width)."""
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), self.tokenizer.pad_token_id)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
        hidden = model.model(
            input_ids=ids, attention_mask=(ids != self.tokenizer.pad_token_id).long()
        ).last_hidden_state
        return model.score(hidden)[..., 0]

    def fit(self, model, steps: int, batch_size: int, lr: float, dense: float) -> float:
        """Train it on (correct, wrong) pairs of the train problems, the learning rate decaying
        linearly to 0 (a constant one leaves the last checkpoint a few points of pair accuracy
        up or down from the one before); returns the last loss."""
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        decay = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0 - i / steps)
        model.train()
        loss = torch.tensor(0.0)
        progress = Progress("reward model classifier", steps)
        for step in range(steps):
            problems = [self.rng.choice(self.train) for _ in range(batch_size)]
            samples = [(a, b, r) for a, b in problems for r in (str(a + b), self.wrong(a, b))]
            rows = [self.encode(a, b, r) for a, b, r in samples]
            s = self.scores(model, rows)
            last = s[torch.arange(len(rows)), torch.tensor([len(r) - 1 for r in rows])]
            loss = -torch.nn.functional.logsigmoid(last[0::2] - last[1::2]).mean()
            if dense:
                at, labels = [], []
                for i, ((a, b, r), row) in enumerate(zip(samples, rows)):
                    per_token = prefix_labels(a, b, r)
                    at += [(i, len(row) - len(per_token) + j) for j in range(len(per_token))]
                    labels += per_token
                idx = torch.tensor(at)
                loss = loss + dense * torch.nn.functional.binary_cross_entropy_with_logits(
                    s[idx[:, 0], idx[:, 1]], torch.tensor(labels)
                )
            opt.zero_grad()
            loss.backward()
            opt.step()
            decay.step()
            progress(step, loss.detach())
        model.eval()
        return float(loss.detach())

    @torch.no_grad()
    def pair_accuracy(self, model, mistakes: Dict[Problem, List[str]]) -> float:
        """How often the correct answer scores above each of the given wrong ones."""
        right, wrong = [], []
        for (a, b), answers in mistakes.items():
            for answer in answers:
                right.append(self.encode(a, b, str(a + b)))
                wrong.append(self.encode(a, b, answer))
        s = self.scores(model, right + wrong)
        last = s[torch.arange(len(right) * 2), torch.tensor([len(r) - 1 for r in right + wrong])]
        return float((last[: len(right)] > last[len(right) :]).float().mean())


def train_reward_model(
    policy,
    tokenizer,
    warm_start,
    chars: str,
    train: Sequence[Problem],
    test: Sequence[Problem],
    lm_steps: int,
    extra_layers: int,
    steps: int,
    lr: float,
    dense: float,
    seed: int,
):
    """(the reward model, its tokenizer, pair accuracies on the policy's sampled mistakes on train
    and held-out problems). `warm_start(model, steps, seed)` trains the backbone on the sums (the
    policy's supervised trainer with the echo loss)."""
    from sppo_megatron.testing.tiny import char_tokenizer

    rm_tokenizer = char_tokenizer(chars)
    rm_tokenizer.chat_template = RM_CHAT_TEMPLATE
    rng = random.Random(seed)
    own = sampled_mistakes(policy, tokenizer, train, 4, seed)
    lm = copy.deepcopy(policy)
    warm_start(lm, lm_steps, seed + 1)
    model = stacked_classifier(lm, extra_layers, seed)
    trainer = RewardModelTrainer(rm_tokenizer, chars, train, own, seed)
    trainer.fit(model, steps, 64, lr, dense)
    held_out = sampled_mistakes(policy, tokenizer, test, 8, seed + 2)
    fresh_train = sampled_mistakes(policy, tokenizer, rng.sample(list(train), len(test)), 8, seed + 3)
    accuracy = {
        "train_sampled": trainer.pair_accuracy(model, fresh_train),
        "held_out_sampled": trainer.pair_accuracy(model, held_out),
    }
    return model, rm_tokenizer, accuracy
