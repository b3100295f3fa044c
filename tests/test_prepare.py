"""MATH / GSM8K preparation: boxed-answer extraction, splits, and the written parquet schema."""

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from sppo_megatron.data.prepare import (
    INSTRUCTION,
    RECIPES,
    gsm8k_ground_truth,
    math_ground_truth,
    prepare,
)
from sppo_megatron.errors import DataError
from sppo_megatron.reward.boxed import last_boxed_only_string, remove_boxed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------- boxed answers


@pytest.mark.parametrize(
    "text, boxed",
    [
        ("so $\\boxed{\\frac{1}{\\sqrt{2}}}$.", "\\boxed{\\frac{1}{\\sqrt{2}}}"),
        ("first \\boxed{1} then \\boxed{2}", "\\boxed{2}"),
        ("\\boxed{a} and \\fbox{b}", "\\boxed{a}"),
        ("only \\fbox{x^{2}} here", "\\fbox{x^{2}}"),
        ("answer $\\boxed 5$ done", "\\boxed 5"),
        ("spaced \\boxed {7}", "\\boxed {7}"),
        ("unclosed \\boxed{1 + {2}", None),
        ("\\boxed{1} and unclosed \\boxed{2", None),
        ("no box at all", None),
        ("\\boxed", None),
        ("trailing \\boxed ", None),
    ],
)
def test_last_boxed_only_string(text, boxed):
    assert last_boxed_only_string(text) == boxed


@pytest.mark.parametrize(
    "boxed, content",
    [
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\fbox{x^{2}}", "x^{2}"),
        ("\\boxed 5", "5"),
        ("\\boxed {7}", "7"),
        ("\\boxed{}", ""),
    ],
)
def test_remove_boxed(boxed, content):
    assert remove_boxed(boxed) == content


def test_remove_boxed_rejects_other_strings():
    with pytest.raises(ValueError, match="not a"):
        remove_boxed("{5}")


def test_ground_truths():
    assert (
        math_ground_truth("We get $x = \\boxed{\\{1, 2\\}}$ and $\\boxed{\\dfrac{3}{\\sqrt{4}}}$.")
        == "\\dfrac{3}{\\sqrt{4}}"
    )
    assert math_ground_truth("no answer") is None
    assert gsm8k_ground_truth("She pays 1,000 + 234.\n#### 1,234") == "1234"
    assert gsm8k_ground_truth("no marker 5") is None
    assert gsm8k_ground_truth("#### ") is None


# ---------------------------------------------------------------- files


def math_record(i, answer="\\frac{1}{2}"):
    return {
        "problem": f"Problem {i}?",
        "solution": f"Work. So \\boxed{{{answer}}}.",
        "level": "Level 2",
        "type": "Algebra",
    }


def write_jsonl(path, records):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    return str(path)


def read(path):
    return pq.read_table(str(path)).to_pylist()


def test_math_named_splits_schema_and_nested_braces(tmp_path):
    train = write_jsonl(
        tmp_path / "math_train.jsonl",
        [math_record(0, "x^{2}+\\frac{a}{b}"), math_record(1), {**math_record(2), "solution": "none"}],
    )
    test = write_jsonl(tmp_path / "math_test.jsonl", [math_record(3, "\\sqrt{\\frac{1}{3}}")])
    counts = prepare(RECIPES["math"], [train, test], str(tmp_path / "out"))
    assert counts == {"train": 2, "test": 1}
    rows = read(tmp_path / "out" / "train.parquet")
    assert rows[0] == {
        "prompt": [{"role": "user", "content": "Problem 0? " + INSTRUCTION}],
        "data_source": "math",
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": "x^{2}+\\frac{a}{b}"},
        "extra_info": {"split": "train", "index": 0, "level": "Level 2", "type": "Algebra"},
    }
    assert rows[1]["extra_info"]["index"] == 1
    (t,) = read(tmp_path / "out" / "test.parquet")
    assert t["reward_model"]["ground_truth"] == "\\sqrt{\\frac{1}{3}}" and t["extra_info"]["split"] == "test"
    assert INSTRUCTION == "Let's think step by step and output the final answer within \\boxed{}."


def test_math_directory_layout_of_single_json_objects(tmp_path):
    root = tmp_path / "MATH"
    for split, n in (("train", 3), ("test", 2)):
        for i in range(n):
            d = root / split / "algebra"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{i}.json").write_text(json.dumps(math_record(i, f"{split}{i}")))
    prepare(RECIPES["math"], [str(root / "train"), str(root / "test")], str(tmp_path / "out"))
    assert [r["reward_model"]["ground_truth"] for r in read(tmp_path / "out" / "train.parquet")] == [
        "train0",
        "train1",
        "train2",
    ]
    assert len(read(tmp_path / "out" / "test.parquet")) == 2


def test_gsm8k_holdout_is_seeded_and_disjoint(tmp_path):
    records = [{"question": f"Q{i}?", "answer": f"steps\n#### {i},000"} for i in range(10)]
    src = tmp_path / "gsm8k.json"
    src.write_text(json.dumps(records))
    prepare(RECIPES["gsm8k"], [str(src)], str(tmp_path / "a"), test_size=3, seed=7)
    prepare(RECIPES["gsm8k"], [str(src)], str(tmp_path / "b"), test_size=3, seed=7)
    train, test = read(tmp_path / "a" / "train.parquet"), read(tmp_path / "a" / "test.parquet")
    assert len(train) == 7 and len(test) == 3
    assert test == read(tmp_path / "b" / "test.parquet")
    gts = [r["reward_model"]["ground_truth"] for r in train + test]
    assert sorted(gts, key=int) == [f"{i}000" for i in range(10)]
    assert train[0]["data_source"] == "gsm8k"
    q = int(train[0]["extra_info"]["question"][1:-1])
    assert train[0]["prompt"][0]["content"] == f"Q{q}? " + INSTRUCTION
    assert train[0]["extra_info"]["answer"] == f"steps\n#### {q},000"


def test_split_errors(tmp_path):
    gsm = [{"question": "Q?", "answer": "#### 1"}]
    train = write_jsonl(tmp_path / "train.jsonl", gsm)
    other = write_jsonl(tmp_path / "extra.jsonl", gsm)
    test = write_jsonl(tmp_path / "test.jsonl", gsm)
    out = str(tmp_path / "out")
    with pytest.raises(DataError, match="cannot tell the split of .*extra.jsonl"):
        prepare(RECIPES["gsm8k"], [train, other], out)
    with pytest.raises(DataError, match="--test-size N"):
        prepare(RECIPES["gsm8k"], [train], out)
    with pytest.raises(DataError, match="--test-size N"):
        prepare(RECIPES["gsm8k"], [other], out)
    with pytest.raises(DataError, match="already named"):
        prepare(RECIPES["gsm8k"], [train, test], out, test_size=1)
    with pytest.raises(DataError, match="larger than the 1 records"):
        prepare(RECIPES["gsm8k"], [other], out, test_size=2)
    with pytest.raises(DataError, match="input not found"):
        prepare(RECIPES["gsm8k"], [str(tmp_path / "missing.jsonl")], out)
    assert not os.path.exists(out)


def test_record_errors_name_the_file_and_record(tmp_path):
    bad = write_jsonl(tmp_path / "train.jsonl", [math_record(0), {"question": "Q", "answer": "#### 1"}])
    with pytest.raises(DataError, match=r"train.jsonl record 1: missing text field 'problem'"):
        prepare(RECIPES["math"], [bad], str(tmp_path / "out"), test_size=0)
    junk = tmp_path / "junk.json"
    junk.write_text("{not json")
    with pytest.raises(DataError, match="junk.json: cannot read records"):
        prepare(RECIPES["math"], [str(junk)], str(tmp_path / "out"), test_size=0)
    none = write_jsonl(tmp_path / "n" / "x.jsonl", [{**math_record(0), "solution": "no box"}])
    with pytest.raises(DataError, match="no math records with a final answer"):
        prepare(RECIPES["math"], [none], str(tmp_path / "out"), test_size=0)
    assert not os.path.exists(tmp_path / "out")


def test_cli(tmp_path):
    src = write_jsonl(tmp_path / "src" / "train.jsonl", [{"question": "Q?", "answer": "#### 3"}] * 4)
    tool = os.path.join(REPO, "tools", "prepare_gsm8k.py")
    ok = subprocess.run(
        [sys.executable, tool, "--input", src, "--out", str(tmp_path / "out"), "--test-size", "1"],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    assert "train.parquet: 3 rows" in ok.stdout
    bad = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "tools", "prepare_math.py"),
            "--input",
            src,
            "--out",
            str(tmp_path / "out2"),
            "--test-size",
            "1",
        ],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2
    assert bad.stderr.startswith("prepare_math.py: error: ") and "record 0: missing text field 'problem'" in bad.stderr


class FakeSplit:
    def __init__(self, records):
        self.records = records

    def to_list(self):
        return self.records


def test_hub_tries_ids_in_order(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load(hub_id, config=None):
        calls.append((hub_id, config))
        if hub_id == "DigitalLearningGmbH/MATH-lighteval":
            raise ConnectionError("offline")
        return {"train": FakeSplit([math_record(0), math_record(1)]), "test": FakeSplit([math_record(2, "7")])}

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    assert prepare(RECIPES["math"], [], str(tmp_path / "m"), hub="") == {"train": 2, "test": 1}
    assert calls == [("DigitalLearningGmbH/MATH-lighteval", None), ("hendrycks/competition_math", None)]
    assert read(tmp_path / "m" / "test.parquet")[0]["reward_model"]["ground_truth"] == "7"
    calls.clear()
    monkeypatch.setattr(
        datasets,
        "load_dataset",
        lambda h, c=None: calls.append((h, c)) or {"train": FakeSplit([{"question": "Q", "answer": "#### 5"}] * 3)},
    )
    prepare(RECIPES["gsm8k"], [], str(tmp_path / "g"), test_size=1, hub="openai/gsm8k")
    assert calls == [("openai/gsm8k", "main")]
    assert len(read(tmp_path / "g" / "train.parquet")) == 2
