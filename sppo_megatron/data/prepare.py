"""Turn MATH, GSM8K and UltraFeedback source files into prompt parquet files in verl's schema.

Each record becomes one row:
    prompt        [{"role": "user", "content": question + " " + INSTRUCTION}]  (UltraFeedback: the
                  instruction as it is)
    data_source   "math", "gsm8k" (the keys the reward dispatch knows; verl writes
                  "DigitalLearningGmbH/MATH-lighteval" for MATH) or "ultrafeedback"
    ability       "math" ("chat" for UltraFeedback)
    reward_model  {"style": "rule", "ground_truth": final answer}; UltraFeedback prompts have no
                  ground truth: {"style": "model"} (for a preference oracle, reward.source != rule)
    extra_info    {"split", "index", ...the dataset's own fields}
MATH's answer is the content of the last \\boxed{...} of the reference solution, GSM8K's the
text after "####" without thousands separators. The tools/prepare_*.py scripts call `main`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import pyarrow as pa
import pyarrow.parquet as pq

from sppo_megatron.errors import DataError, UserError
from sppo_megatron.platform.files import atomic_write
from sppo_megatron.reward.boxed import last_boxed_only_string, remove_boxed

INSTRUCTION = "Let's think step by step and output the final answer within \\boxed{}."
SPLITS = ("train", "test")
INPUT_EXTENSIONS = (".json", ".jsonl", ".parquet")


def math_ground_truth(solution: str) -> Optional[str]:
    """Content of the last \\boxed{...} (\\fbox fallback) of a MATH solution; None without one."""
    boxed = last_boxed_only_string(solution)
    return None if boxed is None else remove_boxed(boxed)


def gsm8k_ground_truth(answer: str) -> Optional[str]:
    """The number after '####' in a GSM8K answer, commas removed; None without one."""
    if "####" not in answer:
        return None
    final = answer.split("####")[-1].strip().replace(",", "")
    return final or None


@dataclass(frozen=True)
class Recipe:
    """What differs between datasets: field names, answer extraction (None: prompts for a
    preference oracle, no ground truth), hub ids."""

    data_source: str
    question_fields: Tuple[str, ...]  # the first one a record has is the question
    answer_field: Optional[str]
    ground_truth: Optional[Callable[[str], Optional[str]]]
    extra_fields: Tuple[str, ...]
    hub: Tuple[Tuple[str, Optional[str]], ...]  # (dataset id, config), tried in order
    ability: str = "math"


RECIPES: Dict[str, Recipe] = {
    "math": Recipe(
        "math",
        ("problem",),
        "solution",
        math_ground_truth,
        ("level", "type"),
        (("DigitalLearningGmbH/MATH-lighteval", None), ("hendrycks/competition_math", None)),
    ),
    "gsm8k": Recipe(
        "gsm8k", ("question",), "answer", gsm8k_ground_truth, ("question", "answer"), (("openai/gsm8k", "main"),)
    ),
    # openbmb/UltraFeedback (the SPPO paper's prompts) names it instruction, its binarized copies prompt
    "ultrafeedback": Recipe(
        "ultrafeedback",
        ("instruction", "prompt"),
        None,
        None,
        ("source", "prompt_id"),
        (("openbmb/UltraFeedback", None),),
        ability="chat",
    ),
}


def make_row(
    question: str, ground_truth: Optional[str], data_source: str, extra_info: Dict, ability: str = "math"
) -> Dict:
    """One row of the verl prompt schema; without a ground truth a prompt for a preference oracle."""
    if ground_truth is None:
        return {
            "prompt": [{"role": "user", "content": question}],
            "data_source": data_source,
            "ability": ability,
            "reward_model": {"style": "model", "ground_truth": None},
            "extra_info": extra_info,
        }
    return {
        "prompt": [{"role": "user", "content": question + " " + INSTRUCTION}],
        "data_source": data_source,
        "ability": ability,
        "reward_model": {"style": "rule", "ground_truth": ground_truth},
        "extra_info": extra_info,
    }


def read_records(path: str) -> List[Dict]:
    """Records of a .parquet, .jsonl or .json file (a list of objects, one object, or JSON lines)."""
    try:
        if path.endswith(".parquet"):
            return pq.read_table(path).to_pylist()
        with open(path, encoding="utf-8") as f:
            text = f.read()
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
    except (OSError, ValueError, pa.ArrowException) as e:
        raise DataError(f"{path}: cannot read records ({e})") from None
    records = data if isinstance(data, list) else [data]
    if not all(isinstance(r, dict) for r in records):
        raise DataError(f"{path}: expected JSON objects (records), found {type(records[0]).__name__}")
    return records


def input_files(inputs: Sequence[str]) -> List[Tuple[str, str]]:
    """(file, name used to detect its split) for each input file or file under an input directory."""
    found = []
    for given in inputs:
        if os.path.isfile(given):
            found.append((given, os.path.basename(given)))
        elif os.path.isdir(given):
            parent = os.path.dirname(os.path.abspath(given))
            for root, _, names in sorted(os.walk(given)):
                for name in sorted(names):
                    if name.endswith(INPUT_EXTENSIONS):
                        path = os.path.join(root, name)
                        found.append((path, os.path.relpath(os.path.abspath(path), parent)))
        else:
            raise DataError(f"{given}: input not found")
    if not found:
        raise DataError(f"no {', '.join(INPUT_EXTENSIONS)} files in {', '.join(inputs)}")
    return found


def split_of(name: str) -> Optional[str]:
    """'train' or 'test' when the name says so, None when it names neither."""
    lower = name.lower()
    hits = [s for s in SPLITS if s in lower]
    if len(hits) > 1:
        raise DataError(f"{name}: the name contains both 'train' and 'test'; rename it")
    return hits[0] if hits else None


def split_local(inputs: Sequence[str], test_size: Optional[int], seed: int) -> Dict[str, List[Dict]]:
    """Records per split: from train/test in the file names, else a seeded holdout of test_size."""
    by_split: Dict[Optional[str], List[Tuple[str, List[Dict]]]] = {"train": [], "test": [], None: []}
    for path, name in input_files(inputs):
        by_split[split_of(name)].append((path, read_records(path)))
    if by_split[None] and (by_split["train"] or by_split["test"]):
        raise DataError(
            f"cannot tell the split of {', '.join(p for p, _ in by_split[None])}: name every input "
            "*train* or *test*, or give only unnamed inputs and --test-size"
        )
    tagged = {s: [(p, i, r) for p, recs in by_split[s] for i, r in enumerate(recs)] for s in by_split}
    if by_split["test"]:
        if test_size is not None:
            raise DataError("--test-size holds out test records, but an input is already named *test*")
        return {"train": tagged["train"], "test": tagged["test"]}
    if test_size is None:
        raise DataError(
            "no input is named *train* or *test*; pass --test-size N to hold out N records for test"
            if not by_split["train"]
            else "no input is named *test*; pass --test-size N to hold out N training records for test"
        )
    return holdout(tagged["train"] + tagged[None], test_size, seed)


def holdout(records: List, test_size: int, seed: int) -> Dict[str, List]:
    """A seeded random test set of test_size records; both splits keep the input order."""
    if test_size > len(records):
        raise DataError(f"--test-size {test_size} is larger than the {len(records)} records given")
    test_ids = set(random.Random(seed).sample(range(len(records)), test_size))
    return {
        "train": [r for i, r in enumerate(records) if i not in test_ids],
        "test": [r for i, r in enumerate(records) if i in test_ids],
    }


def load_hub(recipe: Recipe, dataset_id: Optional[str], test_size: Optional[int], seed: int) -> Dict[str, List]:
    """Records per split from the Hugging Face hub (needs network and the `datasets` package)."""
    try:
        import datasets
    except ImportError:
        raise DataError("--hub needs the `datasets` package (pip install datasets)") from None

    if dataset_id:
        candidates = [(h, c) for h, c in recipe.hub if h == dataset_id] or [(dataset_id, None)]
    else:
        candidates = list(recipe.hub)
    errors = []
    for hub_id, config in candidates:
        try:
            loaded = datasets.load_dataset(hub_id, config)
        except Exception as e:  # noqa: BLE001 - any hub failure: try the next id, report all
            errors.append(f"{hub_id}: {type(e).__name__}: {e}")
            continue
        tagged = {s: [(f"{hub_id}[{s}]", i, r) for i, r in enumerate(loaded[s].to_list())] for s in loaded}
        if "test" in tagged:
            if test_size is not None:
                raise DataError(f"{hub_id} has a test split; drop --test-size")
            return {"train": tagged.get("train", []), "test": tagged["test"]}
        if test_size is None:
            raise DataError(f"{hub_id} has no test split; pass --test-size N")
        return holdout(tagged.get("train", []), test_size, seed)
    raise DataError("could not load from the hub:\n" + "\n".join(errors))


def build_rows(tagged: List[Tuple[str, int, Dict]], recipe: Recipe, split: str) -> Tuple[List[Dict], int]:
    """Schema rows for one split and how many records had no final answer (skipped)."""
    rows, skipped = [], 0
    wanted = " or ".join(repr(f) for f in recipe.question_fields)
    if recipe.answer_field:
        wanted += f" and {recipe.answer_field!r}"
    for source, i, record in tagged:
        question = next((record[f] for f in recipe.question_fields if isinstance(record.get(f), str)), None)
        if question is None or (recipe.answer_field and not isinstance(record.get(recipe.answer_field), str)):
            missing = recipe.answer_field if question is not None else recipe.question_fields[0]
            raise DataError(
                f"{source} record {i}: missing text field {missing!r} (a {recipe.data_source} record "
                f"has {wanted}; found {sorted(record)})"
            )
        ground_truth = None
        if recipe.ground_truth is not None:
            ground_truth = recipe.ground_truth(record[recipe.answer_field])
            if ground_truth is None:
                skipped += 1
                continue
        elif not question.strip():
            skipped += 1
            continue
        extra = {"split": split, "index": len(rows), **{k: record.get(k) for k in recipe.extra_fields}}
        rows.append(make_row(question, ground_truth, recipe.data_source, extra, recipe.ability))
    return rows, skipped


def write_parquet(rows: List[Dict], path: str) -> None:
    """Write atomically: a crash leaves the previous file, never a partial one."""
    atomic_write(path, lambda tmp: pq.write_table(pa.Table.from_pylist(rows), tmp))


def prepare(
    recipe: Recipe,
    inputs: Sequence[str],
    out: str,
    test_size: Optional[int] = None,
    seed: int = 0,
    hub: Optional[str] = None,
) -> Dict[str, int]:
    """Read, convert and write DIR/train.parquet and DIR/test.parquet (non-empty splits); rows per split.

    Everything is read and checked before anything is written.
    """
    if hub is not None:
        tagged = load_hub(recipe, hub or None, test_size, seed)
    else:
        tagged = split_local(inputs, test_size, seed)
    converted = {split: build_rows(tagged[split], recipe, split) for split in SPLITS}
    if not any(rows for rows, _ in converted.values()):
        raise DataError(f"no {recipe.data_source} records with a final answer (or a prompt) in the input")
    os.makedirs(out, exist_ok=True)
    counts = {}
    for split, (rows, skipped) in converted.items():
        if rows:
            path = os.path.join(out, f"{split}.parquet")
            write_parquet(rows, path)
            print(
                f"wrote {path}: {len(rows)} rows"
                + (f" ({skipped} records without a final answer (or an empty prompt) skipped)" if skipped else "")
            )
        counts[split] = len(rows)
    return counts


def main(dataset: str, argv: Optional[Sequence[str]] = None) -> int:
    """Command line of tools/prepare_math.py and tools/prepare_gsm8k.py."""
    recipe = RECIPES[dataset]
    hub_ids = " or ".join(h for h, _ in recipe.hub)
    parser = argparse.ArgumentParser(
        prog=f"prepare_{dataset}.py",
        description=f"Convert {dataset.upper()} into train.parquet / test.parquet prompt files (verl schema). "
        "The split comes from 'train'/'test' in the input names, else --test-size.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--input",
        action="append",
        metavar="FILE_OR_DIR",
        help="json, jsonl or parquet file, or a directory of them (repeatable)",
    )
    source.add_argument(
        "--hub",
        nargs="?",
        const="",
        metavar="DATASET_ID",
        help=f"load from the Hugging Face hub (default {hub_ids}); needs network",
    )
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--test-size", type=int, default=None, help="hold out N random records as test")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --test-size holdout")
    args = parser.parse_args(argv)
    if args.test_size is not None and args.test_size < 0:
        parser.error("--test-size must be >= 0")
    try:
        prepare(recipe, args.input or [], args.out, args.test_size, args.seed, args.hub)
    except UserError as e:
        for line in str(e).splitlines():
            print(f"prepare_{dataset}.py: error: {line}", file=sys.stderr)
        return e.exit_code
    return 0
