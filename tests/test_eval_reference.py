"""`sppo-eval --reference`: win rate against reference responses, judged by the configured oracle."""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sppo_megatron.cli.eval import main
from sppo_megatron.testing.oracle_models import make_reward_model
from sppo_megatron.testing.tiny import make_tiny_hf_model

QUESTIONS = ["what is 2 + 3 ?", "name a color .", "say hi ."]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_ref")
    policy = make_tiny_hf_model("qwen2", root / "policy", num_hidden_layers=2)
    rm = make_reward_model(root / "rm", seed=3)
    rows = [
        {
            "prompt": [{"role": "user", "content": q}],
            "data_source": "ultrafeedback",
            "ability": "chat",
            "reward_model": {"style": "model", "ground_truth": None},
            "extra_info": {"i": 0},
        }
        for q in QUESTIONS
    ]
    pq.write_table(pa.Table.from_pylist(rows), root / "prompts.parquet")
    refs = root / "refs.jsonl"
    refs.write_text(
        "".join(
            json.dumps({"messages": [{"role": "user", "content": q}], "response": r}) + "\n"
            for q, r in zip(QUESTIONS[::-1], ["hi", "red is a color", "5"])
        )
    )
    return root, policy, rm


def args(root, policy, rm, *extra):
    return [
        "--model",
        policy,
        "--data",
        str(root / "prompts.parquet"),
        "--reference",
        str(root / "refs.jsonl"),
        "--out",
        str(root / "out.json"),
        "--max-new-tokens",
        "5",
        "rollout.engine=hf",
        "reward.source=reward_model",
        f"reward.model_path={rm}",
        "algorithm.preference=bradley_terry",
        *extra,
    ]


def test_win_rate_against_references_matches_the_reward_model(setup, capsys):
    from sppo_megatron.config.schema import RewardConfig
    from sppo_megatron.reward.oracles.reward_model import RewardModelOracle

    root, policy, rm = setup
    assert main(args(root, policy, rm)) == 0
    result = json.loads((root / "out.json").read_text())
    assert result["oracle"] == "reward_model" and len(result["per_prompt"]) == 3
    oracle = RewardModelOracle(RewardConfig(source="reward_model", model_path=rm))
    wins = []
    for record in result["per_prompt"]:
        [response], messages = record["responses"], record["messages"]
        s_model, s_ref = oracle.compute([(messages, response), (messages, record["reference"])])
        assert record["win_rate"] == pytest.approx(1 / (1 + math.exp(-(s_model - s_ref))), abs=1e-6)
        wins.append(record["win_rate"])
    metrics = result["metrics"]
    assert metrics["eval/win_rate"] == pytest.approx(sum(wins) / 3)
    assert metrics["eval/reference_length_mean"] > 0 and metrics["eval/model_length_mean"] > 0
    assert "win rate vs reference" in capsys.readouterr().out


def test_reference_errors_exit_2(setup, capsys):
    root, policy, rm = setup
    with pytest.raises(SystemExit) as info:
        main(args(root, policy, rm, "reward.source=rule"))
    assert info.value.code == 2 and "--reference: set reward.source to a preference oracle" in capsys.readouterr().err
    (root / "short.jsonl").write_text(
        json.dumps({"messages": [{"role": "user", "content": "say hi ."}], "response": "x"}) + "\n"
    )
    bad = args(root, policy, rm)
    bad[bad.index("--reference") + 1] = str(root / "short.jsonl")
    with pytest.raises(SystemExit) as info:
        main(bad)
    assert info.value.code == 2 and "no reference response for prompt row 0" in capsys.readouterr().err
