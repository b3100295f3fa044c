"""Core attention for the local (non-Transformer-Engine) layer spec: torch SDPA.

Replaces megatron-core's unfused `DotProductAttention` (which materialises the [b, np, s, s]
score matrix through a global buffer) with `torch.nn.functional.scaled_dot_product_attention`
(flash / memory-efficient kernels on GPU, a fused math path on CPU). Same constructor and
forward signature as `DotProductAttention` in megatron-core 0.16.1 and 0.19.2:

    forward(query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
            packed_seq_params=None) -> [sq, b, np * hn]

with query [sq, b, np, hn] and key/value [sk, b, ng, hn] (GQA: ng query groups).

Masks follow megatron's convention: `attention_mask` is boolean, True = masked out,
broadcastable to [b, np, sq, sk]. For causal mask types the causal mask is always applied and
a given mask is combined with it (so a padding mask or megatron's full causal mask both work);
for padding / arbitrary / no_mask types only the given mask applies. A query row with every
key masked (a padding position) attends to all keys instead of producing NaN; its output is
meaningless and must be ignored, as with megatron's own kernels.

Not supported (clear error): packed sequences (PackedSeqParams / THD), attention_bias,
context parallelism, non-vanilla softmax types.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from megatron.core import parallel_state, tensor_parallel
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.utils import is_layer_window_attention
from megatron.core.utils import divide
from torch import Tensor


def _sdpa_supports_gqa() -> bool:
    try:
        return "enable_gqa" in inspect.signature(F.scaled_dot_product_attention).parameters
    except (TypeError, ValueError):  # builtins without a signature: try a tiny call
        try:
            q = torch.zeros(1, 2, 1, 1)
            F.scaled_dot_product_attention(q, q[:, :1], q[:, :1], enable_gqa=True)
            return True
        except TypeError:
            return False


_HAS_GQA = _sdpa_supports_gqa()


class SDPAttention(MegatronModule):
    """Drop-in core attention for megatron's SelfAttention, computed with torch SDPA."""

    def __init__(
        self,
        config: Any,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: Optional[float] = None,
        softmax_scale: Optional[float] = None,
        cp_comm_type: Optional[str] = None,
        pg_collection: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(config=config)
        self.config = config
        if getattr(config, "context_parallel_size", 1) != 1:
            raise NotImplementedError("SDPAttention does not support context parallelism; use Transformer Engine")
        if getattr(config, "softmax_type", "vanilla") != "vanilla":
            raise NotImplementedError(f"SDPAttention supports only softmax_type='vanilla', not {config.softmax_type!r}")
        self.layer_number = max(1, layer_number)
        self.attn_mask_type = attn_mask_type
        self.attention_type = attention_type

        if pg_collection is not None and getattr(pg_collection, "tp", None) is not None:
            tp_size = pg_collection.tp.size()
        else:
            tp_size = parallel_state.get_tensor_model_parallel_world_size()
        projection_size = config.kv_channels * config.num_attention_heads
        self.hidden_size_per_partition = divide(projection_size, tp_size)
        self.num_heads_per_partition = divide(config.num_attention_heads, tp_size)
        self.num_groups_per_partition = divide(config.num_query_groups, tp_size)
        head_dim = divide(projection_size, config.num_attention_heads)
        # apply_query_key_layer_scaling divides the scale by the layer number and multiplies the
        # scores back inside the fp32 softmax: the net scale is unchanged.
        self.softmax_scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(head_dim)
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout
        self.window_size = None
        if is_layer_window_attention(config.window_size, getattr(config, "window_attn_skip_freq", None), layer_number):
            self.window_size = tuple(config.window_size)

    def _mask(self, attention_mask: Optional[Tensor], causal: bool, sq: int, sk: int, device) -> Optional[Tensor]:
        """Boolean 'allowed' mask for SDPA (True = attend), or None when plain causal suffices."""
        masked = None  # True = masked out (megatron convention)
        if attention_mask is not None:
            masked = attention_mask.to(device=device, dtype=torch.bool)
        left, right = self.window_size if self.window_size is not None else (-1, -1)
        need_left = left >= 0 and sk > left + 1
        need_right = right >= 0 and not causal and sk > right + 1
        q_pos = torch.arange(sk - sq, sk, device=device).unsqueeze(1)  # queries = last sq keys
        k_pos = torch.arange(sk, device=device).unsqueeze(0)
        if causal and (masked is not None or need_left or sq != sk):
            future = k_pos > q_pos
            masked = future if masked is None else (masked | future)
        if need_left or need_right:
            band = torch.zeros(sq, sk, dtype=torch.bool, device=device)
            if need_left:
                band = band | (k_pos < q_pos - left)
            if need_right:
                band = band | (k_pos > q_pos + right)
            masked = band if masked is None else (masked | band)
        if masked is None:
            return None
        # a fully masked row would give NaN: let it attend everywhere (its output is ignored)
        masked = masked & ~masked.all(dim=-1, keepdim=True)
        return ~masked

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attention_mask: Optional[Tensor],
        attn_mask_type: Optional[AttnMaskType] = None,
        attention_bias: Optional[Tensor] = None,
        packed_seq_params: Any = None,
        **kwargs: Any,
    ) -> Tensor:
        if packed_seq_params is not None:
            raise NotImplementedError(
                "SDPAttention (local layer spec) does not support packed sequences (PackedSeqParams); "
                "use Transformer Engine (model.transformer_impl=transformer_engine) or unpacked batches"
            )
        if attention_bias is not None:
            raise NotImplementedError("SDPAttention does not support attention_bias")
        if kwargs:
            raise NotImplementedError(f"SDPAttention: unsupported arguments {sorted(kwargs)}")
        mask_type = attn_mask_type if attn_mask_type is not None else self.attn_mask_type
        causal = mask_type in (AttnMaskType.causal, AttnMaskType.padding_causal)

        sq, b, np_, hn = query.shape
        sk = key.shape[0]
        # [s, b, h, d] -> [b, h, s, d]
        q = query.permute(1, 2, 0, 3)
        k = key.permute(1, 2, 0, 3)
        v = value.permute(1, 2, 0, 3)
        groups = k.shape[1]
        extra = {}
        if groups != np_:
            if _HAS_GQA:
                extra["enable_gqa"] = True
            else:
                rep = np_ // groups
                k = k.repeat_interleave(rep, dim=1)
                v = v.repeat_interleave(rep, dim=1)

        allowed = self._mask(attention_mask, causal, sq, sk, q.device)
        dropout_p = self.dropout_p if self.training else 0.0
        kw: Dict[str, Any] = dict(
            attn_mask=allowed,
            dropout_p=dropout_p,
            is_causal=causal and allowed is None,
            scale=self.softmax_scale,
            **extra,
        )
        if dropout_p > 0.0 and not self.config.sequence_parallel:
            with tensor_parallel.get_cuda_rng_tracker().fork():
                out = F.scaled_dot_product_attention(q, k, v, **kw)
        else:
            out = F.scaled_dot_product_attention(q, k, v, **kw)
        # [b, h, sq, d] -> [sq, b, h*d]
        return out.permute(2, 0, 1, 3).reshape(sq, b, np_ * hn)
