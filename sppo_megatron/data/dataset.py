"""Prompt datasets in verl's parquet schema, tokenised once at load time.

Columns: `prompt` (list of {role, content}; the name is data.prompt_key), `data_source` (selects
the reward function), `ability`, `reward_model` ({style, ground_truth}), `extra_info` (dict).
Rows with `reward_model.style: model` may leave out the ground truth (prompts for a preference
oracle, e.g. UltraFeedback); their ground_truth is None.
Every problem is reported as a DataError naming the file and the 0-based row, before training
starts, rather than as a failure in the middle of a run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import pyarrow as pa
import pyarrow.parquet as pq
from jinja2 import TemplateError

from sppo_megatron.errors import DataError


@dataclass
class PromptItem:
    """One prompt, ready for the rollout engine and the reward function.

    index: 0-based row across the concatenated files before filtering, so it identifies the
    row whatever max_prompt_length is. prompt_text is the rendered prompt, decoded back from the
    token ids when they were truncated; messages are the prompt as given (what a preference
    oracle renders with its own template).
    """

    prompt_ids: List[int]
    prompt_text: str
    data_source: str
    ground_truth: Optional[str]
    extra_info: Dict[str, Any] = field(default_factory=dict)
    index: int = 0
    messages: List[Dict[str, str]] = field(default_factory=list)


class PromptDataset:
    """The loaded prompts; `num_filtered` counts those dropped as longer than max_prompt_length."""

    def __init__(self, items: List[PromptItem], files: List[str], num_filtered: int):
        self.items = items
        self.files = files
        self.num_filtered = num_filtered

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> PromptItem:
        return self.items[i]


def _check_is_file(path: str) -> None:
    if not os.path.exists(path):
        raise DataError(f"{path}: prompt file not found")
    if not os.path.isfile(path):
        raise DataError(f"{path}: not a file (expected a parquet file)")


def _check_columns(names: Sequence[str], path: str, prompt_key: str) -> None:
    missing = [c for c in (prompt_key, "data_source", "reward_model") if c not in names]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(repr(c) for c in missing)} (found {', '.join(names)})")


def check_prompt_file(path: str, prompt_key: str) -> None:
    """What can be checked of a prompt file without reading its rows (preflight): it is a parquet
    file with the prompt, data_source and reward_model columns."""
    _check_is_file(path)
    try:
        names = pq.read_schema(path).names
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable parquet file ({e})") from None
    _check_columns(names, path, prompt_key)


def _read_table(path: str) -> pa.Table:
    _check_is_file(path)
    try:
        return pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable parquet file ({e})") from None


def _rows(table: pa.Table, path: str) -> List[Dict[str, Any]]:
    try:
        return table.to_pylist()
    except UnicodeDecodeError as e:
        bad = [name for name in table.column_names if not _decodes(table.column(name))]
        raise DataError(
            f"{path}: column {', '.join(map(repr, bad)) or '?'} holds strings that are not valid UTF-8 ({e})"
        ) from None


def _decodes(column: pa.ChunkedArray) -> bool:
    try:
        column.to_pylist()
        return True
    except UnicodeDecodeError:
        return False


def _messages(value: Any, where: str, prompt_key: str) -> List[Dict[str, str]]:
    """The chat messages of one row, checked: a non-empty list of {role, content} strings."""
    if not isinstance(value, list) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
    ):
        raise DataError(
            f"{where}: column '{prompt_key}' must be a list of {{role, content}} messages with "
            f"string values, got {str(value)[:100]!r}"
        )
    if not any(m["content"].strip() for m in value):
        raise DataError(f"{where}: empty prompt (no messages, or only empty contents)")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _check_row(
    row: Dict[str, Any], where: str, prompt_key: str
) -> Tuple[List[Dict[str, str]], str, Optional[str], Dict[str, Any]]:
    """(messages, data_source, ground_truth as str (None for style model), extra_info) of one row,
    or a DataError."""
    messages = _messages(row[prompt_key], where, prompt_key)
    if not isinstance(row["data_source"], str):
        raise DataError(f"{where}: data_source must be a string, got {row['data_source']!r}")
    reward_model = row["reward_model"]
    if not isinstance(reward_model, dict):
        raise DataError(
            f"{where}: reward_model must be a dict {{style, ground_truth}}, got {str(reward_model)[:100]!r}"
        )
    truth = reward_model.get("ground_truth")
    if truth is None and reward_model.get("style") != "model":
        raise DataError(
            f"{where}: reward_model.ground_truth is missing (reward_model = {str(reward_model)[:100]!r}); "
            "rows for a preference oracle say reward_model.style: model"
        )
    if truth is not None and not str(truth).strip() and reward_model.get("style") != "model":
        raise DataError(
            f"{where}: reward_model.ground_truth is empty; a rule-based reward has nothing to compare with "
            "(rows for a preference oracle say reward_model.style: model)"
        )
    extra = row.get("extra_info")
    if extra is not None and not isinstance(extra, dict):
        raise DataError(f"{where}: extra_info must be a dict, got {type(extra).__name__}")
    return messages, row["data_source"], None if truth is None else str(truth), extra or {}


def _render(messages: List[Dict[str, str]], tokenizer, apply_chat_template: bool, where: str) -> str:
    if not apply_chat_template:
        return "\n".join(m["content"] for m in messages)
    try:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except TemplateError as e:
        raise DataError(f"{where}: the tokenizer's chat template rejected the messages: {e}") from None


def load_prompt_dataset(files: Union[str, Sequence[str]], tokenizer, cfg) -> PromptDataset:
    """Read, check, render and tokenise the prompts of `files` (concatenated in order).

    `cfg` is a DataConfig (prompt_key, max_prompt_length, filter_overlong_prompts, truncation,
    apply_chat_template). Overlong prompts are dropped and counted when filtering; otherwise
    truncation=left keeps the last max_prompt_length tokens, right the first, error refuses.
    """
    files = [files] if isinstance(files, str) else list(files)
    if not files:
        raise DataError("no prompt files given")
    if cfg.apply_chat_template and not getattr(tokenizer, "chat_template", None):
        raise DataError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat_template; "
            "set data.apply_chat_template=false to join the message contents with newlines"
        )
    limit = int(cfg.max_prompt_length)
    items: List[PromptItem] = []
    num_filtered = num_rows = 0
    for path in files:
        table = _read_table(path)
        _check_columns(table.column_names, path, cfg.prompt_key)
        rows = _rows(table, path)
        checked = [_check_row(row, f"{path} row {row_num}", cfg.prompt_key) for row_num, row in enumerate(rows)]
        texts = [
            _render(messages, tokenizer, cfg.apply_chat_template, f"{path} row {row_num}")
            for row_num, (messages, *_) in enumerate(checked)
        ]
        encoded = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        for row_num, ((messages, data_source, ground_truth, extra), text, ids) in enumerate(
            zip(checked, texts, encoded)
        ):
            if len(ids) > limit:
                if cfg.filter_overlong_prompts:
                    num_filtered += 1
                    continue
                if cfg.truncation == "error":
                    raise DataError(
                        f"{path} row {row_num}: prompt has {len(ids)} tokens > data.max_prompt_length={limit}; "
                        "raise the limit, set data.filter_overlong_prompts=true, or data.truncation=left|right"
                    )
                ids = ids[-limit:] if cfg.truncation == "left" else ids[:limit]
                text = tokenizer.decode(ids, skip_special_tokens=False)
            items.append(
                PromptItem(
                    list(ids), text, data_source, ground_truth, extra, index=num_rows + row_num, messages=messages
                )
            )
        num_rows += len(rows)
    if not items:
        raise DataError(
            f"no prompts left in {', '.join(files)}: {num_rows} rows, {num_filtered} filtered as longer "
            f"than data.max_prompt_length={limit} tokens"
        )
    return PromptDataset(items, files, num_filtered)
