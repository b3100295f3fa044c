"""The CPU demo's reward-model builder (tools/tiny_reward_model.py): its negatives are wrong, its
per-position labels mark the right prefix, and what it trains on is exactly what the
reward.source=reward_model oracle feeds the saved model."""

from __future__ import annotations

import copy
import random

import torch

from sppo_megatron.config.schema import RewardConfig
from sppo_megatron.reward.oracles import build_oracle, oracle_problems
from sppo_megatron.testing.tiny import char_tokenizer, tiny_config, tiny_model
from tools import tiny_reward_model as trm

CHARS = "0123456789+="


def test_near_misses_are_wrong_and_include_the_carry_error():
    rng = random.Random(0)
    seen = set()
    for _ in range(3000):
        a, b = rng.randrange(50), rng.randrange(50)
        assert trm.near_miss(a, b, rng, CHARS) != str(a + b)
        seen.add(trm.near_miss(39, 12, rng, CHARS))
    assert {"41", "50", "52", "61", "5", "511"} <= seen


def test_prefix_labels_mark_the_right_prefix_and_the_end():
    assert trm.prefix_labels(39, 12, "51") == [1.0, 1.0, 1.0]
    assert trm.prefix_labels(39, 12, "50") == [1.0, 0.0, 0.0]
    assert trm.prefix_labels(39, 12, "5") == [1.0, 0.0]
    assert trm.prefix_labels(39, 12, "511") == [1.0, 1.0, 0.0, 0.0]
    assert trm.prefix_labels(39, 12, "") == [0.0]


def test_the_trained_model_scores_in_the_oracle_as_in_training(tmp_path):
    tok = char_tokenizer(CHARS)
    policy = tiny_model(
        tiny_config(
            "qwen2",
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=1,
            tie_word_embeddings=True,
        ),
        seed=0,
    )
    train = [(a, b) for a in range(10) for b in range(10)]
    steps = []
    model, rm_tok, accuracy = trm.train_reward_model(
        policy,
        tok,
        lambda lm, n, seed: steps.append(n),
        CHARS,
        train,
        train[:8],
        lm_steps=3,
        extra_layers=1,
        steps=2,
        lr=1e-3,
        dense=1.0,
        seed=0,
    )
    assert steps == [3] and model.config.num_hidden_layers == 2 and model.config.num_labels == 1
    assert set(accuracy) == {"train_sampled", "held_out_sampled"}
    model.save_pretrained(tmp_path / "rm")
    rm_tok.save_pretrained(tmp_path / "rm")
    cfg = RewardConfig(
        source="reward_model", model_path=str(tmp_path / "rm"), batch_size=4, max_length=32, dtype="fp32"
    )
    assert oracle_problems(cfg) == []
    messages = [[{"role": "user", "content": f"{a}+{b}="}] for a, b in train[:3] for _ in range(2)]
    responses = [r for a, b in train[:3] for r in (str(a + b), "9+")]
    scores, _ = build_oracle(cfg, "bradley_terry").score_groups(messages, responses, 2)
    trainer = trm.RewardModelTrainer(rm_tok, CHARS, train, {}, seed=0)
    rows = [trainer.encode(a, b, r) for (a, b) in train[:3] for r in (str(a + b), "9+")]
    assert all(row[-1] == rm_tok.eos_token_id for row in rows)  # the template closes the answer
    with torch.no_grad():
        s = trainer.scores(model, rows)
    want = [float(s[i, len(r) - 1]) for i, r in enumerate(rows)]
    assert max(abs(x - y) for x, y in zip(scores, want)) <= 1e-5


def test_echo_warm_start_trains_the_model_alone_and_saves_no_echo_head():
    from tools import make_tiny_assets as mta

    tok = char_tokenizer(CHARS)
    pairs = [(a, b) for a in range(10) for b in range(10)]
    base = tiny_model(
        tiny_config(
            "qwen2",
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=1,
            tie_word_embeddings=True,
        ),
        seed=0,
    )
    trained = {}
    for echo in (0.0, 2.0):
        model = copy.deepcopy(base)
        loss = mta.warm_start(model, tok, pairs, 5, 8, 3e-3, 0, echo=echo)
        assert torch.isfinite(torch.tensor(loss))
        assert model.state_dict().keys() == base.state_dict().keys()  # the echo head is dropped
        trained[echo] = model.state_dict()
    assert any(not torch.equal(trained[0.0][k], trained[2.0][k]) for k in trained[0.0])  # the echo loss trains it


def test_the_build_reports_progress_about_every_eighth_of_a_loop(capsys):
    progress = trm.Progress("reward model classifier", 20)
    for step in range(20):
        progress(step, torch.tensor(0.5))
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(",")[0].strip() for line in lines] == [
        f"reward model classifier: step {s}/20" for s in (2, 4, 6, 8, 10, 12, 14, 16, 18, 20)
    ]
    assert "loss 0.5000" in lines[-1]
