"""The Megatron actor: the SPPO policy on megatron-core (see actor.py for the API).

    from sppo_megatron.actor import MegatronActor, SequenceBatch, LogProbs

Modules, one concern each: batch (rollout batches, LogProbs, collation), batch_plan (mini-/micro-
batch plans), logprobs (vocab-parallel log-probs and entropy), setup (model, DDP, optimizer, LR
schedule), optimizer_state (torch-Adam checkpoint workarounds), checkpoint (save/load),
memory (GPU offload), actor (MegatronActor).
"""

from sppo_megatron.actor.actor import MegatronActor
from sppo_megatron.actor.batch import LogProbs, SequenceBatch

__all__ = ["MegatronActor", "SequenceBatch", "LogProbs"]
