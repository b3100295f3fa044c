"""`sppo-eval --reference FILE`: the win rate of the model's responses against reference responses
to the same prompts, judged by the configured preference oracle (reward.source), with both mean
response lengths beside it: an oracle that favours longer answers shows up as a length gap.

FILE is a parquet or JSONL file with one row per prompt: the prompt messages (column `messages`,
or data.prompt_key) and the reference `response`. Each model sample is compared with its
prompt's reference as a group of two, so P(model > reference) comes from the same win-rate
construction as training (algorithm.preference; matrix oracles give it directly).
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, Dict, List, Sequence

import torch

from sppo_megatron.algorithm.targets import sample_win_rates
from sppo_megatron.config.schema import AlgorithmConfig
from sppo_megatron.data.prepare import read_records
from sppo_megatron.errors import DataError
from sppo_megatron.reward.oracles import Oracle
from sppo_megatron.trainer.samples import RolloutBatch


def _key(messages: Any) -> str:
    return json.dumps([{"role": m["role"], "content": m["content"]} for m in messages], sort_keys=True)


def load_references(path: str, prompt_key: str) -> Dict[str, str]:
    """prompt messages (as a key) -> reference response, from a parquet or JSONL file."""
    rows = read_records(path)
    refs: Dict[str, str] = {}
    for i, row in enumerate(rows):
        messages = row.get("messages", row.get(prompt_key))
        if not isinstance(messages, list) or not all(
            isinstance(m, dict) and "role" in m and "content" in m for m in messages
        ):
            raise DataError(
                f"--reference {path} row {i}: needs 'messages' (or {prompt_key!r}) as a list of "
                "{role, content} messages"
            )
        if not isinstance(row.get("response"), str):
            raise DataError(f"--reference {path} row {i}: needs the reference text in 'response'")
        refs.setdefault(_key(messages), row["response"])
    return refs


def reference_win_rates(
    oracle: Oracle,
    rollout: RolloutBatch,
    references: Dict[str, str],
    algorithm: AlgorithmConfig,
    tokenizer: Any,
    path: str,
) -> tuple[Dict[str, float], List[Dict[str, Any]]]:
    """`eval/win_rate` (mean over prompts of P(model sample > reference), averaged over a prompt's
    samples), `eval/model_length_mean`, `eval/reference_length_mean` (tokens of the policy's
    tokenizer), and one record per prompt (collective: the oracle splits its work over the ranks)."""
    refs: List[str] = []
    for item in rollout.items:
        ref = references.get(_key(item.messages))
        if ref is None:
            raise DataError(
                f"--reference {path}: no reference response for prompt row {item.index} "
                f"({item.messages[-1]['content'][:60]!r})"
            )
        refs.append(ref)
    messages: List[Any] = []
    pairs: List[str] = []
    for i, s in enumerate(rollout.samples):
        messages += [rollout.item_of(i).messages] * 2
        pairs += [rollout.texts[i], refs[s.prompt_index]]
    values, _ = oracle.score_groups(messages, pairs, 2)

    # batch_softmean has no pairwise preference: scalar scores are compared Bradley-Terry style
    preference = "bradley_terry" if algorithm.preference == "batch_softmean" else algorithm.preference
    pair_rule = replace(algorithm, preference=preference, include_self=False)
    wins = sample_win_rates(torch.tensor(values, dtype=torch.float64), 2, pair_rule)[0::2]
    ref_lengths = [len(ids) for ids in tokenizer(refs, add_special_tokens=False)["input_ids"]]
    per_prompt: List[Dict[str, Any]] = []
    for p, item in enumerate(rollout.items):
        mine = [i for i, s in enumerate(rollout.samples) if s.prompt_index == p]
        lengths = [len(rollout.samples[i].response_ids) for i in mine]
        per_prompt.append(
            {
                "index": item.index,
                "messages": item.messages,
                "reference": refs[p],
                "responses": [rollout.texts[i] for i in mine],
                "win_rate": float(sum(float(wins[i]) for i in mine) / len(mine)),
                "model_length": sum(lengths) / len(lengths),
                "reference_length": float(ref_lengths[p]),
            }
        )
    metrics = {
        "eval/win_rate": _mean([r["win_rate"] for r in per_prompt]),
        "eval/model_length_mean": _mean([r["model_length"] for r in per_prompt]),
        "eval/reference_length_mean": _mean([r["reference_length"] for r in per_prompt]),
        "eval/num_prompts": float(len(per_prompt)),
    }
    return metrics, per_prompt


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)
