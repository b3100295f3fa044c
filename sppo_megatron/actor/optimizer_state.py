"""The one place that works around megatron-core's torch-Adam checkpoint bugs (0.16.1 and 0.19.2).

Without Transformer Engine or apex, megatron's optimizers wrap `torch.optim.AdamW`, whose
per-parameter state holds a `step` tensor. Resuming the distributed optimizer from a
`fully_reshardable` checkpoint then goes wrong in five ways (tests/test_actor.py resumes the
distributed optimizer across layouts):

1. a fresh optimizer has no state, and `state_dict()` asserts `len(steps) == 1` (so even
   building the sharded state dict to save or load fails);
2. loading raises `KeyError: 'step'`: the distributed optimizer copies every tensor of the
   current Adam state from the loaded tensors, which carry no `step` (it travels in the
   param_groups);
3. loading copies into main params that are views of parameters requiring grad, outside
   `torch.no_grad()` (an autograd error);
4. SILENT: after loading, every parameter's state shares ONE `step` tensor object, and Adam
   increments it once per parameter per step (the bias correction jumps, e.g. 2 -> 20);
5. SILENT: the step built into the load request from the pre-load state can win over the
   restored one.

The fixes, applied around every save and load by actor/checkpoint.py:
* `init_state(optimizer)` (1): give an empty optimizer real state with a zero-learning-rate
  step on zero gradients (parameters unchanged bit for bit: AdamW with lr = 0 multiplies by
  1 - 0 * wd and adds 0), then reset every `step` to 0, which is exactly a fresh Adam state;
* `loading(optimizer)` (2, 3): a context for `optimizer.load_state_dict` that runs it under
  `torch.no_grad()` and, on each distributed optimizer, lets the per-parameter state copy keep
  the current `step` when the loaded tensors have none (it is fixed by set_step next);
* `set_step(optimizer, n)` (4, 5): afterwards every parameter gets its OWN step tensor holding
  n, the number of successful optimizer steps, which the LR scheduler also counts (both advance
  only on successful steps) and which the checkpoint stores;
* `apply_optim_settings(optimizer)`: the loaded param_groups carry the saving run's max_lr /
  min_lr / betas / eps (SILENT: a changed optim.lr on resume was ignored); this run's go back.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch


def torch_optimizers(optimizer: Any) -> Iterator[torch.optim.Optimizer]:
    """The torch optimizers inside a megatron (chained) optimizer."""
    subs = getattr(optimizer, "chained_optimizers", None) or [optimizer]
    for sub in subs:
        inner = getattr(sub, "optimizer", None)
        if isinstance(inner, torch.optim.Optimizer):
            yield inner


def _params(opt: torch.optim.Optimizer):
    for group in opt.param_groups:
        for p in group["params"]:
            if p.numel() > 0:
                yield p


@torch.no_grad()
def init_state(optimizer: Any) -> None:
    """Materialise Adam state in optimizers that have none, equal to a fresh state (step 0)."""
    for opt in torch_optimizers(optimizer):
        params = list(_params(opt))
        if not params or all(len(opt.state.get(p, {})) > 0 for p in params):
            continue
        saved = [(g["lr"], g.get("weight_decay", 0.0)) for g in opt.param_groups]
        old_grads = [p.grad for p in params]
        for g in opt.param_groups:
            g["lr"] = torch.zeros_like(g["lr"]) if isinstance(g["lr"], torch.Tensor) else 0.0
            g["weight_decay"] = 0.0
        for p in params:
            p.grad = torch.zeros_like(p)
        opt.step()
        for p, grad in zip(params, old_grads):
            p.grad = grad
        for g, (lr, wd) in zip(opt.param_groups, saved):
            g["lr"], g["weight_decay"] = lr, wd
        for p in params:
            state = opt.state[p]
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    state[key] = torch.zeros_like(value)


def set_step(optimizer: Any, step: int) -> None:
    """Give every parameter its own Adam `step` tensor holding `step`."""
    for opt in torch_optimizers(optimizer):
        for state in opt.state.values():
            old = state.get("step")
            if isinstance(old, torch.Tensor):
                state["step"] = torch.full_like(old, float(step))
            elif old is not None:
                state["step"] = type(old)(step)


def adam_steps(optimizer: Any) -> list:
    """The distinct step values in the optimizer state (diagnostics and tests)."""
    values = set()
    for opt in torch_optimizers(optimizer):
        for state in opt.state.values():
            if "step" in state:
                s = state["step"]
                values.add(float(s.item() if isinstance(s, torch.Tensor) else s))
    return sorted(values)


@contextlib.contextmanager
def loading(optimizer: Any) -> Iterator[None]:
    """Context for `optimizer.load_state_dict(...)`: workarounds (2) and (3)."""
    subs = getattr(optimizer, "chained_optimizers", None) or [optimizer]
    patched = []
    for sub in subs:
        original = getattr(sub, "_set_main_param_and_optimizer_states", None)
        if original is None or not hasattr(sub, "model_param_group_index_map"):
            continue

        def keep_missing(model_param, tensors, _sub=sub, _original=original):
            group_index, group_order = _sub.model_param_group_index_map[model_param]
            main_param = _sub.optimizer.param_groups[group_index]["params"][group_order]
            current = _sub.optimizer.state.get(main_param, {})
            extra = {k: v for k, v in current.items() if k not in tensors and isinstance(v, torch.Tensor)}
            return _original(model_param, {**tensors, **extra})

        sub._set_main_param_and_optimizer_states = keep_missing
        patched.append(sub)
    try:
        with torch.no_grad():
            yield
    finally:
        for sub in patched:
            del sub._set_main_param_and_optimizer_states  # back to the class method


def apply_optim_settings(optimizer: Any) -> None:
    """Put this run's optim.* (the optimizer's own config) back into its parameter groups after a
    checkpoint was loaded into it. torch's load_state_dict restores the saved groups, whose
    max_lr / min_lr (which megatron's scheduler prefers to its own), betas and eps are those of
    the run that saved them: a changed learning rate would be ignored. The scheduler's
    load_state_dict, called next, recomputes lr and weight decay from the step count."""
    for sub in getattr(optimizer, "chained_optimizers", None) or [optimizer]:
        config = sub.config
        for group in sub.param_groups:
            if not group.get("is_decoupled_lr", False):
                group["max_lr"], group["min_lr"] = float(config.lr), float(config.min_lr)
            group["betas"] = (float(config.adam_beta1), float(config.adam_beta2))
            group["eps"] = float(config.adam_eps)
