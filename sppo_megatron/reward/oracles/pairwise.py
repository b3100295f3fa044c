"""reward.source=pairwise: PairRM's K x K preference matrix, as the SPPO authors computed it.

uclaml/SPPO ranks each prompt's K samples with llm-blender (scripts/rank.py:
`Blender.rank(prompts, candidates, return_scores=True)`), then turns the scores into
probabilities (scripts/compute_prob.py). With l_ij PairRM's logit for [prompt; y_i; y_j]
(> 0: y_i better), every ordered pair i != j is scored and (reward.pairwise_prob):

  sppo  s_i = 1/K sum_j (l_ij - l_ji), the zero diagonal included (llm-blender
        gpt_eval/utils.py get_scores_from_cmps, policy max_logits, on ranker._full_predict's
        K x K logits), then P_ij = 1 / (1 + exp(s_j - s_i)) (compute_prob.py from_ranks)
  pair  P_ij = sigmoid((l_ij - l_ji) / 2), each pair alone (not the authors'; llm-blender's
        compare(mode="[A,B]+[B,A]", return_logits=True) returns l_ij - l_ji, twice this argument)

Both give P_ij + P_ji = 1 and P_ii = 1/2.

The inputs follow the checkpoint's layout (pairrm_model.py). Each part is [CLS] prefix text
[SEP]: the prompt after <|source|>, truncated to max_length x 1224/2048 tokens (PairRM's
source_maxlength of 2048), each response after its candidate prefix truncated to half of what
the prompt leaves, the first tokens kept. llm-blender's layout follows its collator
(pair_ranker/collator.py CrossCompareCollator): a literal [SEP] in any text becomes a space and
candidates are encoded after <|candidate|>, which is then swapped for <|candidate1|> /
<|candidate2|>; PairRM-hf follows its model card (tokenize_pair): texts as they are, each
candidate encoded after its own prefix. Prefix tokens inside a text (which abort both
references) become spaces, as llm-blender treats [SEP], and are counted in
`reward/pairrm_prefix_frac`. The prompt is rendered by reward.pairwise_prompt_template's chat
template as uclaml/SPPO's apply_template does (scripts/rank.py).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from jinja2 import TemplateError
from transformers import AutoTokenizer

from sppo_megatron.errors import ConfigError
from sppo_megatron.reward.oracles.base import PairOracle
from sppo_megatron.reward.oracles.hf import batches
from sppo_megatron.reward.oracles.pairrm_model import (
    BLENDER,
    CAND1_PREFIX,
    CAND2_PREFIX,
    CAND_PREFIX,
    PREFIXES,
    SOURCE_PREFIX,
    load_pairrm,
)

#: PairRM's budget split (source 1224 + 2 x 412 candidate tokens of 2048), scaled to reward.max_length
_CANDIDATE_SHARE = 412 / 2048
#: the assistant content rendered after the prompt and cut off (uclaml/SPPO apply_template's)
_CUT = "None"


def source_text(messages: List[dict]) -> str:
    """The prompt as plain text: the message contents, one per line."""
    return "\n".join(m["content"] for m in messages)


def sigmoid(x: float) -> float:
    """1 / (1 + exp(-x)) without overflow."""
    return 0.5 * (1.0 + math.tanh(x / 2))


def sppo_probabilities(logits: Sequence[Sequence[float]]) -> List[List[float]]:
    """uclaml/SPPO's P from PairRM's K x K logits (zero diagonal): llm-blender's rank scores
    s_i = mean_j (l_ij - l_ji), then P_ij = 1 / (1 + exp(s_j - s_i))."""
    k = len(logits)
    s = [sum(logits[i][j] - logits[j][i] for j in range(k)) / k for i in range(k)]
    return [[sigmoid(s[i] - s[j]) for j in range(k)] for i in range(k)]


def pair_probabilities(logits: Sequence[Sequence[float]]) -> List[List[float]]:
    """P_ij = sigmoid((l_ij - l_ji) / 2) per pair (reward.pairwise_prob=pair)."""
    k = len(logits)
    return [[sigmoid((logits[i][j] - logits[j][i]) / 2) for j in range(k)] for i in range(k)]


#: reward.pairwise_prob
PROBABILITIES = {"sppo": sppo_probabilities, "pair": pair_probabilities}


class PromptText:
    """The prompt text PairRM reads: the messages and an assistant turn in the chat template of
    the tokenizer at `path`, cut where the assistant's content starts (uclaml/SPPO scripts/rank.py
    apply_template, which cut at the first "None": the last is taken here, so a prompt that
    says None is kept whole); the contents one per line when there is no template."""

    def __init__(self, path: Optional[str], trust_remote_code: bool = False):
        self.path, self.tokenizer = path, None
        if path:
            try:
                self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
            except (OSError, ValueError, ImportError) as e:
                raise ConfigError(
                    f"reward.pairwise_prompt_template: cannot load a tokenizer from {path}: {e}"
                ) from None

    def __call__(self, messages: List[dict]) -> str:
        if self.tokenizer is None or not getattr(self.tokenizer, "chat_template", None):
            return source_text(messages)
        try:
            rendered = self.tokenizer.apply_chat_template(
                list(messages) + [{"role": "assistant", "content": _CUT}], tokenize=False
            )
        except TemplateError as e:
            raise ConfigError(
                f"reward.pairwise_prompt_template: the chat template of {self.path} cannot render a prompt "
                f"({[m['role'] for m in messages]}): {e}"
            ) from None
        cut = rendered.rfind(_CUT)
        if cut < 0:
            raise ConfigError(
                f"reward.pairwise_prompt_template: the chat template of {self.path} does not render the "
                "assistant's answer, so the prompt cannot be cut from it"
            )
        return rendered[:cut]


class PairRMOracle(PairOracle):
    def __init__(self, cfg: Any):
        self.model, self.tokenizer, self.layout = load_pairrm(cfg)
        self.probabilities = PROBABILITIES[cfg.pairwise_prob]
        self.prompt_text = PromptText(cfg.pairwise_prompt_template, cfg.trust_remote_code)
        self.batch_size = cfg.batch_size
        self.max_length = cfg.max_length
        self.candidate_max = int(cfg.max_length * _CANDIDATE_SHARE)
        self.source_max = cfg.max_length - 2 * self.candidate_max
        if self.candidate_max < 3:
            raise ConfigError(
                f"reward.max_length={cfg.max_length} leaves PairRM {self.candidate_max} tokens per response; it "
                "needs 3 ([CLS], the prefix, [SEP]): use at least 15"
            )
        self.cls_id, self.sep_id = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id
        self.cand_ids = (self.model.config.cand1_prefix_id, self.model.config.cand2_prefix_id)

    def neutralise(self, text: str) -> Tuple[str, bool]:
        """`text`, or, when PairRM's prefix tokens appear in it as the tokenizer normalises it,
        its normalised form with each replaced by a space (until none is left); and whether
        there were any."""
        normalize, hit = self.tokenizer.backend_tokenizer.normalizer.normalize_str, False
        while any(p in (norm := normalize(text)) for p in PREFIXES):
            text, hit = functools.reduce(lambda t, p: t.replace(p, " "), PREFIXES, norm), True
        return text, hit

    def encode(self, prefix: str, text: str) -> Tuple[List[int], bool]:
        """The ids of prefix + text (no [CLS]/[SEP], not truncated) under the layout's rules,
        and whether text held prefix tokens (neutralised)."""
        if self.layout == BLENDER:
            text = text.replace(self.tokenizer.sep_token, " ")
        text, hit = self.neutralise(text)
        return self.tokenizer.encode(prefix + text, add_special_tokens=False), hit

    def wrap(self, ids: List[int], max_length: int) -> List[int]:
        """[CLS] ids [SEP] in at most max_length tokens, the first kept (encode's truncation)."""
        return [self.cls_id] + ids[: max_length - 2] + [self.sep_id]

    def pair_ids(self, source: List[int], first: List[int], second: List[int]) -> List[int]:
        """The input of one ordered pair from the encoded prompt and candidates."""
        head = self.wrap(source, self.source_max)
        budget = (self.max_length - len(head)) // 2
        return head + self.wrap(first, budget) + self.wrap(second, budget)

    def compute(self, units: List[Any]) -> List[Tuple[float, Tuple[bool, bool, bool]]]:
        """(l_ij, whether the prompt, y_i, y_j held prefix tokens) per (messages, y_i, y_j); each
        prompt and response is encoded once."""
        sources: Dict[Any, Tuple[List[int], bool]] = {}
        candidates: Dict[Any, Tuple[List[int], bool]] = {}

        def candidate(text: str, slot: int) -> Tuple[List[int], bool]:
            if self.layout == BLENDER:  # encoded once after <|candidate|>, its id swapped
                if text not in candidates:
                    candidates[text] = self.encode(CAND_PREFIX, text)
                ids, hit = candidates[text]
                return [self.cand_ids[slot]] + ids[1:], hit
            if (slot, text) not in candidates:
                candidates[slot, text] = self.encode((CAND1_PREFIX, CAND2_PREFIX)[slot], text)
            return candidates[slot, text]

        rows, flags = [], []
        for messages, a, b in units:
            key = tuple((m["role"], m["content"]) for m in messages)
            if key not in sources:
                sources[key] = self.encode(SOURCE_PREFIX, self.prompt_text(messages))
            (source, s_hit), (first, a_hit), (second, b_hit) = sources[key], candidate(a, 0), candidate(b, 1)
            rows.append(self.pair_ids(source, first, second))
            flags.append((s_hit, a_hit, b_hit))
        return list(zip(self.logits(rows), flags))

    @torch.no_grad()
    def logits(self, rows: List[List[int]]) -> List[float]:
        """PairRM's logit for each input."""
        out: List[float] = []
        for batch in batches(rows, self.batch_size):
            encoded = self.tokenizer.pad({"input_ids": batch}, return_tensors="pt")
            out += (
                self.model(encoded["input_ids"].to(self.device), encoded["attention_mask"].to(self.device))
                .float()
                .tolist()
            )
        return out

    def assemble(self, results: List[Any], num_samples: int, n: int) -> List[Any]:
        return super().assemble([logit for logit, _ in results], num_samples, n)

    def preferences(self, logits: List[List[float]]) -> List[List[float]]:
        return self.probabilities(logits)

    def metrics(self, results: List[Any], values: List[Any], n: int) -> Dict[str, float]:
        """reward/pairrm_prefix_frac: the fraction of samples whose prompt or response held
        PairRM's prefix tokens (replaced by spaces, see the module docstring)."""
        hit = [False] * len(values)
        flags = iter(flags for _, flags in results)
        for g in range(len(values) // n):
            for i in range(n):
                for j in range(n):
                    if i != j:
                        s_hit, a_hit, b_hit = next(flags)
                        hit[g * n + i] |= s_hit or a_hit
                        hit[g * n + j] |= s_hit or b_hit
        return {"reward/pairrm_prefix_frac": sum(hit) / max(len(hit), 1)}
