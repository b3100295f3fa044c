"""Preference oracles for reward.source other than rule: reward models, pairwise preference models
(PairRM), LLM judges and remote scorers, behind one interface (`Oracle.score_groups`)."""

from __future__ import annotations

from typing import Any

from sppo_megatron.reward.oracles.base import Oracle
from sppo_megatron.reward.oracles.checks import oracle_problems

# each oracle's module (its model code, transformers) is imported by build_oracle: preflight imports
# this package for its checks alone.


def build_oracle(cfg: Any, preference: str) -> Oracle:
    """The oracle of the `reward` group (source != rule), its model loaded on the host.
    `preference` (algorithm.preference) tells a remote scorer to answer with matrices."""
    if cfg.source == "reward_model":
        from sppo_megatron.reward.oracles.reward_model import RewardModelOracle

        return RewardModelOracle(cfg)
    if cfg.source == "pairwise":
        from sppo_megatron.reward.oracles.pairwise import PairRMOracle

        return PairRMOracle(cfg)
    if cfg.source == "judge":
        from sppo_megatron.reward.oracles.judge import JudgeOracle

        return JudgeOracle(cfg)
    if cfg.source == "remote":
        from sppo_megatron.reward.oracles.remote import RemoteOracle

        return RemoteOracle(cfg, matrix=preference == "matrix")
    raise ValueError(f"reward.source={cfg.source!r} has no oracle (rule scoring is RewardScorer)")


__all__ = ["Oracle", "build_oracle", "oracle_problems"]
