"""Rollout ranks (`rollout.placement: separate`): the engine runs on its own ranks.

    training ranks                               rollout ranks
    RemoteRolloutEngine (a RolloutEngine)        serve(engine): one command at a time
      update_weights(stream) --- buckets ------>   engine.update_weights(received stream)
      submit(prompts, ...) ----- request ------>   engine.generate(...)  (split over the rollout ranks)
      collect() <--------------- samples -------   rollout rank 0 sends them, with per-rank timestamps

Training rank 0 talks to the rollout ranks over the `Channel` (platform/distributed.py): commands
and weight buckets are broadcast from it (every rollout rank holds a full HF copy of the weights,
as colocated HF engines do); results come back from rollout rank 0 and are shared with the other
training ranks. A failure on the rollout side is raised on every training rank.

One request may be in flight (`submit` returns at once): that is the off-policy overlap. Any other
command first collects it, so a weight sync or a validation pass never interleaves with it.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

import torch

from sppo_megatron.platform.distributed import Channel, rank, role_split, share_outcomes
from sppo_megatron.rollout.base import RolloutEngine, RolloutSample, SamplingParams
from sppo_megatron.sync.buckets import bucketize, mb_to_bytes

#: channel rank of rollout rank 0, which answers
_ANSWERING = 1


def _flatten(
    bucket: List[Tuple[str, torch.Tensor]],
) -> Tuple[List[Tuple[str, Tuple[int, ...], torch.dtype]], torch.Tensor]:
    meta = [(name, tuple(t.shape), t.dtype) for name, t in bucket]
    flat = torch.cat([t.detach().reshape(-1).cpu() for _, t in bucket])
    return meta, flat.view(torch.uint8)


def _receive_buckets(channel: Channel) -> Iterator[Tuple[str, torch.Tensor]]:
    """The stream `RemoteRolloutEngine._load_weights` broadcasts, rebuilt bucket by bucket (None ends it)."""
    while True:
        meta = channel.broadcast_object(None, src=0)
        if meta is None:
            return
        dtype = meta[0][2]
        count = sum(int(torch.Size(shape).numel()) for _, shape, _ in meta)
        flat = channel.broadcast_tensor(
            torch.empty(count * torch.empty((), dtype=dtype).element_size(), dtype=torch.uint8), src=0
        ).view(dtype)
        offset = 0
        for name, shape, _ in meta:
            size = int(torch.Size(shape).numel())
            yield name, flat[offset : offset + size].view(shape)
            offset += size


class RemoteRolloutEngine(RolloutEngine):
    """The training ranks' handle on the engine of the rollout ranks (see the module docstring)."""

    name = "remote"

    def __init__(self, bucket_mb: float) -> None:
        split = role_split()
        self.channel: Optional[Channel] = split.channel  # training rank 0 only
        self.rollout_ranks = split.rollout_world
        self.bucket_bytes = mb_to_bytes(bucket_mb)
        self._tickets = 0
        self._pending: Optional[int] = None  # the ticket of the request in flight
        self._done: Dict[int, Any] = {}  # results collected early (another command came first)
        self._closed = False
        hello = self._call(("hello",))
        super().__init__(eos_token_ids=hello["eos_token_ids"], dtype=hello["dtype"])
        # the weights cross the channel whole: partial updates are the remote engine's own business
        caps = hello["capabilities"]
        self.capabilities = dataclasses.replace(caps, partial_updates=False) if caps is not None else caps
        self.remote_name = hello["describe"]

    # ---- the channel ----------------------------------------------------------------------
    def _request(self, command: Tuple[Any, ...]) -> None:
        if self._pending is not None:
            ticket = self._pending  # (_recv clears it)
            self._done[ticket] = self._recv()
        self.channel.broadcast_object(command, src=0)

    def _recv(self) -> Any:
        self._pending = None
        return self.channel.recv_outcome(src=_ANSWERING)

    def _share(self, fn) -> Any:
        """fn() on training rank 0 (it talks to the rollout ranks), its outcome on every training rank."""
        return share_outcomes(fn if self.channel is not None else None)[0]

    def _call(self, command: Tuple[Any, ...]) -> Any:
        def on_rank0():
            self._request(command)
            return self._recv()

        return self._share(on_rank0)

    # ---- generation ---------------------------------------------------------------------
    def submit(self, prompt_token_ids: List[List[int]], sampling: SamplingParams, n: int) -> int:
        """Start generating on the rollout ranks and return at once: the ticket for `collect`."""
        self._tickets += 1
        if self.channel is not None:
            self._request(("generate", prompt_token_ids, sampling, n))
            self._pending = self._tickets
        return self._tickets

    def collect(self, ticket: int) -> Tuple[List[RolloutSample], List[Dict[str, float]]]:
        """The samples of request `ticket` (the same on every training rank) and one
        {rank, start, end} record (unix seconds) per rollout rank."""

        def on_rank0():
            if ticket in self._done:
                return self._done.pop(ticket)
            if ticket != self._pending:
                raise RuntimeError(f"rollout request {ticket} was never submitted or is already collected")
            return self._recv()

        return self._share(on_rank0)

    def generate(self, prompt_token_ids: List[List[int]], sampling: SamplingParams, n: int) -> List[RolloutSample]:
        return self.collect(self.submit(prompt_token_ids, sampling, n))[0]

    def _generate_local(self, prompts, sampling, n, first_prompt_index):  # pragma: no cover - generate is remote
        raise NotImplementedError

    # ---- weights ------------------------------------------------------------------------
    def _load_weights(self, named_tensors: Iterable[Tuple[str, torch.Tensor]]) -> None:
        """Every training rank walks the export (its gathers are collective); rank 0 broadcasts
        it to the rollout ranks in single-dtype buckets of rollout.sync_bucket_mb."""

        def on_rank0():
            self._request(("weights",))
            for bucket in bucketize(named_tensors, self.bucket_bytes):
                meta, flat = _flatten(bucket)
                self.channel.broadcast_object(meta, src=0)
                self.channel.broadcast_tensor(flat, src=0)
            self.channel.broadcast_object(None, src=0)
            return self._recv()

        if self.channel is None:
            for _ in named_tensors:
                pass
        self._share(on_rank0)

    def read_weight(self, name: str, rows: int = 4) -> Optional[torch.Tensor]:
        """Rollout rank 0's copy (asked by training rank 0 only; None on the other training ranks)."""
        if self.channel is None:
            return None
        self._request(("read_weight", name, rows))
        return self._recv()

    def describe(self) -> str:
        return f"{self.remote_name} on {self.rollout_ranks} rollout rank(s)"

    def shutdown(self) -> None:
        """Stop the rollout ranks' serve loop. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self.channel is not None:
            if self._pending is not None:
                try:
                    self._recv()
                except Exception:  # noqa: BLE001 - stopping anyway; the error was or will be reported
                    pass
            self.channel.broadcast_object(("stop",), src=0)


def serve(engine: RolloutEngine) -> None:
    """The rollout ranks' loop: run training rank 0's commands on `engine` until "stop".
    Collective over the rollout ranks; rollout rank 0 answers."""
    channel = role_split().channel
    answering = channel.rank == _ANSWERING

    def answer(fn) -> None:
        outcome = share_outcomes(fn)  # every rollout rank's part; their failures raised on all
        if answering:
            channel.send_outcome(lambda: outcome[0])

    while True:
        command = channel.broadcast_object(None, src=0)
        kind = command[0]
        if kind == "stop":
            return
        if kind == "hello":
            answer(
                lambda: {
                    "eos_token_ids": engine.eos_token_ids,
                    "dtype": engine.dtype,
                    "capabilities": engine.capabilities,
                    "describe": engine.describe(),
                }
            )
        elif kind == "weights":
            _serve_weights(engine, channel, answering)
        elif kind == "read_weight":
            answer(functools.partial(engine.read_weight, command[1], rows=command[2]))
        elif kind == "generate":
            _serve_generate(engine, channel, answering, *command[1:])
        else:
            raise RuntimeError(f"rollout rank {rank()}: unknown command {kind!r}")


def _serve_weights(engine: RolloutEngine, channel: Channel, answering: bool) -> None:
    stream = _receive_buckets(channel)
    try:
        engine.update_weights(stream)
        error = None
    except Exception as e:  # noqa: BLE001 - sent to training rank 0 once the stream is drained
        error = e
    for _ in stream:  # a refused tensor must not leave training rank 0 blocked in its broadcasts
        pass

    def outcome():
        if error is not None:
            raise error
        return None

    results = share_outcomes(outcome)
    if answering:
        channel.send_outcome(lambda: results[0])


def _serve_generate(
    engine: RolloutEngine, channel: Channel, answering: bool, prompts: List[List[int]], sampling: SamplingParams, n: int
) -> None:
    def run():
        start = time.time()
        samples = engine.generate(prompts, sampling, n)  # the same list on every rollout rank
        return samples if answering else None, {"rank": rank(), "start": start, "end": time.time()}

    try:
        outcomes = share_outcomes(run)
        result: Any = (outcomes[0][0], [timing for _, timing in outcomes])
        error = None
    except Exception as e:  # noqa: BLE001 - the same on every rollout rank; sent to training rank 0
        error = e
    if answering:

        def reply():
            if error is not None:
                raise error
            return result

        channel.send_outcome(reply)
