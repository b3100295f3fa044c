"""Shared by the vLLM engine tests (the skip when vLLM is not installed is tests/engines.py's): the
tiny models vLLM's CPU attention accepts (head size 32: it has no kernel for the 16 of tiny_config's defaults), an HF
reference, and what a test checks was left behind."""

from __future__ import annotations

import os
from typing import Dict, List, Set

import torch

#: tiny_config overrides: 4 heads of 32, a larger init (peaky logits: greedy has no near-ties)
DENSE = dict(hidden_size=128, intermediate_size=192, initializer_range=0.2)
MOE = dict(hidden_size=128, head_dim=32, initializer_range=0.2)


def make_model(arch: str, path: str, seed: int, **overrides) -> str:
    from sppo_megatron.testing.tiny import make_tiny_hf_model

    return make_tiny_hf_model(arch, path, seed=seed, **{**(MOE if "moe" in arch else DENSE), **overrides})


def hf_logprobs(model, prompt: List[int], response: List[int], temperature: float) -> torch.Tensor:
    """log_softmax(logits / T) of each response token under a transformers model."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + response])).logits[0].float()
    lp = torch.log_softmax(logits / (temperature or 1.0), -1)
    return lp[len(prompt) - 1 : -1].gather(-1, torch.tensor(response)[:, None])[:, 0]


def hf_greedy(model, prompt: List[int], steps: int) -> List[int]:
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt) :]


#: /dev/shm names vLLM and torch create (TP message queues, the CPU all-reduce buffers, torch's
#: shared-memory manager); other processes of the machine create files there too, so a test
#: checks these names and what this process still maps or holds open
SHM_PATTERNS = ("vllm", "cpushm", "-tp:", "psm_")


def shm_files() -> Set[str]:
    return set(os.listdir("/dev/shm"))


def leftover_shm(before: Set[str]) -> Set[str]:
    """/dev/shm files (paths) this process still maps or holds open (unlinked ones are gone
    already), and new ones with vLLM's names."""
    held = {line.split()[5] for line in open("/proc/self/maps") if "/dev/shm/" in line and "(deleted)" not in line}
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("/dev/shm/"):
            held.add(target)
    new = {os.path.join("/dev/shm", f) for f in shm_files() - before if any(p in f for p in SHM_PATTERNS)}
    return held | new


def engine_children() -> List[Dict[str, object]]:
    """This process's children other than multiprocessing's shared resource tracker."""
    import psutil

    out = []
    for proc in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(proc.cmdline())
        except psutil.Error:
            cmd = "?"
        if "resource_tracker" not in cmd:
            out.append({"pid": proc.pid, "cmd": cmd})
    return out
