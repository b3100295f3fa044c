"""Stands in for `sgl_kernel` in SGLang's CPU processes when no sgl_kernel build is installed
(PyPI ships CUDA builds only; see sglang_cpu.py, which serves this file under that name).

SGLang 0.5.23 imports these CPU kernels at module level. With the torch_native attention backend
and no speculative decoding, which is how the rollout engine runs SGLang on CPU, it calls none
of them: they are KV-cache moves and request-slot writes of speculative decoding
(`sglang/srt/speculative/`, `alloc_for_spec_decode`). Each name is therefore importable and
raises if it is ever called. The AMX kernels are absent too, so `torch.ops.sgl_kernel` has no
`convert_weight_packed` and SGLang keeps its torch_native path.
"""

from typing import Any, Callable

_IMPORTED_BY_SGLANG = (
    "assign_draft_cache_locs_contiguous_cpu",
    "assign_extend_cache_locs_cpu",
    "assign_req_to_token_pool_cpu",
    "build_tree_kernel_efficient_cpu",
    "copy_all_layer_kv_cache_cpu",
    "fill_accept_out_cache_loc_cpu",
    "fill_bonus_tokens_cpu",
    "verify_tree_greedy_cpu",
)


def _not_on_this_path(name: str) -> Callable[..., Any]:
    def kernel(*args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(
            f"sgl_kernel.{name}: SGLang's CPU kernel package is not installed, and this path (speculative "
            "decoding or a non-torch_native backend) needs it"
        )

    kernel.__name__ = name
    return kernel


globals().update({name: _not_on_this_path(name) for name in _IMPORTED_BY_SGLANG})
