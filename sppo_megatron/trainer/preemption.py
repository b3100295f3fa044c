"""SIGTERM / SIGUSR1 (Slurm preemption, `scancel --signal`) and SIGINT (Ctrl-C): the first one
asks for a checkpoint at the end of the step, then exit 0; a second one exits at once.

The loop checks the flag at the end of each step, agreeing across ranks (a signal may reach the
ranks at different moments), so every rank saves the same step. A Python signal handler only
runs when the main thread is between bytecodes, which a rank waiting in a collective for a dead
peer may not be for half an hour; so the handler does nothing and a side thread reads the
signals from `signal.set_wakeup_fd`'s socket, written by the C-level handler on delivery. A
SIGTERM after another rank failed, or while one does not answer (`PeerMonitor.silent_peers`, a
few heartbeats long, run after the flag is set and before the checkpoint is announced), is the
launcher tearing the job down (torchrun does at the first failed worker): exit at once rather
than wait for a step that cannot end, saying which rank is gone.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from typing import List

import torch
import torch.distributed as dist

from sppo_megatron.platform.console import say_now
from sppo_megatron.platform.liveness import PROBE_INTERVALS, PeerMonitor, current_monitor
from sppo_megatron.trainer import PROG

SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


def _noop(signum, frame) -> None:  # noqa: ARG001 - installs the C-level handler that writes the wakeup fd
    pass


def _announce(sig: signal.Signals) -> None:
    say_now(
        PROG,
        f"{sig.name} received: checkpointing at the end of this step, then exiting (send it again to exit at once)",
    )


def _exit_now(sig: signal.Signals, why: str) -> None:
    say_now(PROG, f"{sig.name} received {why}: exiting now, without a checkpoint of this step")
    os._exit(128 + sig)


class PreemptionFlag:
    """Installed on construction (main thread), undone by restore()."""

    def __init__(self) -> None:
        self.received: List[int] = []
        self._reader, self._writer = socket.socketpair()
        self._writer.setblocking(False)
        self._previous = {sig: signal.signal(sig, _noop) for sig in SIGNALS}
        self._previous_fd = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        self._thread = threading.Thread(target=self._watch, name="sppo-signals", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while True:
            try:
                data = self._reader.recv(64)
            except OSError:
                return
            if not data:
                return
            for signum in data:
                if signum in SIGNALS:
                    self._on_signal(signal.Signals(signum))

    def _on_signal(self, sig: signal.Signals) -> None:
        monitor = current_monitor() if sig == signal.SIGTERM else None
        failed = monitor.failed_peer() if monitor is not None else None
        if failed or self.received:
            _exit_now(sig, f"after {failed}" if failed else "a second time")
        self.received.append(int(sig))
        if monitor is None:
            _announce(sig)
        else:  # first rule out the teardown after a rank was SIGKILLed (nobody marked a failure)
            threading.Thread(target=self._probe, args=(monitor, sig), name="sppo-teardown-probe", daemon=True).start()

    @staticmethod
    def _probe(monitor: PeerMonitor, sig: signal.Signals) -> None:
        """Announce the checkpoint only once no peer is silent: a survivor of a dead peer says that
        instead (and exits), never that it will checkpoint."""
        silent = monitor.silent_peers(PROBE_INTERVALS * monitor.interval)
        if silent:
            _exit_now(sig, f"while rank {silent[0]} is not responding")
        _announce(sig)

    def requested(self) -> bool:
        """True once this process has been signalled (local: no collective)."""
        return bool(self.received)

    def should_stop(self) -> bool:
        """True on every rank if any rank has been signalled (a collective call)."""
        device = "cuda" if torch.cuda.is_available() else "cpu"
        flag = torch.tensor([1.0 if self.received else 0.0], device=device)
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def restore(self) -> None:
        signal.set_wakeup_fd(self._previous_fd)
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._reader.shutdown(socket.SHUT_RDWR)  # the watcher's recv returns b"" (a fork may hold the writer)
        self._thread.join(timeout=5.0)
        self._reader.close()
        self._writer.close()
