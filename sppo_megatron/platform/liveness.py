"""Peer liveness: a rank that dies (SIGKILL, the OOM killer, a lost node) or fails on its own
ends the others within `parallel.peer_timeout_s`, instead of leaving them in a gloo/NCCL
collective for `parallel.distributed_timeout_minutes` (plain srun does not tear a step down).

A side thread of every rank bumps its counter in the rendezvous store every interval and watches
the next rank's (a ring: constant store traffic per rank; any set of dead ranks has a live
predecessor while one rank lives). A counter that stops moving for the timeout, or a store that
fails or does not answer that long (without torchrun, rank 0 hosts it; a second thread watches
the first for a store call that hangs), means a dead peer; a rank that
left the run by an exception (`mark_failed`) is given FAILED_GRACE_S to print its own error.
`silent_peers` is the quick check a rank makes when a SIGTERM may be the launcher's teardown.
The watcher posts the reason under an abort key that every rank reads each interval; each rank
then exits 1 at once, the watcher with one line naming the rank.
"""

from __future__ import annotations

import datetime
import os
import threading
import time
from typing import List, Optional

import torch.distributed as dist

from sppo_megatron.platform.distributed import detect_launch

#: a counter this high means "finished cleanly": stop watching it
DONE = 1 << 50
#: how long a rank that failed on its own has to report its error before the others stop
FAILED_GRACE_S = 10.0
_ABORT, _FAILED = "abort", "failed"


def _heartbeat_key(rank: int) -> str:
    return f"hb/{rank}"


def _exit_now(message: Optional[str]) -> None:
    if message:
        os.write(2, f"{message}\n".encode())
    os._exit(1)


class PeerMonitor:
    """The liveness thread of this rank (see the module docstring). `store` is any c10d Store
    shared by all ranks; `prog` prefixes the one line printed on a peer's death."""

    def __init__(self, store, rank: int, world_size: int, timeout_s: float, prog: str) -> None:
        self.store, self.rank, self.world_size = store, rank, world_size
        self.timeout_s, self.prog = float(timeout_s), prog
        self.interval = min(5.0, max(0.1, self.timeout_s / 10))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sppo-peer-monitor", daemon=True)
        self._progress = time.monotonic()  # the last time _run completed a round of store calls

    def start(self) -> "PeerMonitor":
        self._thread.start()
        threading.Thread(target=self._watch_progress, name="sppo-peer-monitor-watchdog", daemon=True).start()
        return self

    def _watch_progress(self) -> None:
        while not self._stop.wait(self.interval):
            if time.monotonic() - self._progress > self.timeout_s + self.interval:
                self._abort(
                    f"the rendezvous store has not answered for {self.timeout_s:.0f} s: rank 0 (which "
                    "hosts it without torchrun) or the launcher is hung or gone"
                )

    def failed_peer(self) -> Optional[str]:
        """The failure another rank posted (`mark_failed` or a detected death), if any."""
        for key in (_ABORT, _FAILED):
            try:
                if self.store.check([key]):
                    return self.store.get(key).decode()
            except Exception:  # noqa: BLE001 - an unreachable store is itself a failed peer
                return "the rendezvous store is unreachable"
        return None

    def silent_peers(self, wait_s: float) -> List[int]:
        """The other ranks whose heartbeat does not move within `wait_s` (finished ones left out);
        a store that cannot be reached counts every other rank as silent."""
        others = [r for r in range(self.world_size) if r != self.rank]
        try:
            before = {r: self.store.add(_heartbeat_key(r), 0) for r in others}
            time.sleep(wait_s)
            return [r for r in others if before[r] < DONE and self.store.add(_heartbeat_key(r), 0) == before[r]]
        except Exception:  # noqa: BLE001
            return others

    def mark_failed(self, reason: str) -> None:
        """Tell the other ranks this one is leaving the run because of an error."""
        try:
            self.store.set(_FAILED, f"rank {self.rank} failed: {reason}"[:500])
        except Exception:  # noqa: BLE001 - the others then see the heartbeat stop instead
            pass

    def stop(self, clean: bool) -> None:
        """End the thread; `clean` tells the watcher this rank finished (not died)."""
        self._stop.set()
        self._thread.join(timeout=self.interval + 5.0)
        if clean:
            try:
                self.store.add(_heartbeat_key(self.rank), DONE)
            except Exception:  # noqa: BLE001 - nobody left to tell
                pass

    def _run(self) -> None:
        watched = (self.rank + 1) % self.world_size
        last_value, last_seen = -1, time.monotonic()
        failed_since: Optional[float] = None
        while not self._stop.wait(self.interval):
            now = time.monotonic()
            try:
                self.store.add(_heartbeat_key(self.rank), 1)
                if self.store.check([_ABORT]):
                    _exit_now(None)  # the watcher that posted it has said why
                value = self.store.add(_heartbeat_key(watched), 0)
                failed = self.store.check([_FAILED])
            except Exception as e:  # noqa: BLE001 - the store went away
                if now - last_seen > self.timeout_s and not self._stop.is_set():
                    self._abort(
                        f"cannot reach the rendezvous store for {self.timeout_s:.0f} s ({type(e).__name__}): "
                        "rank 0 (which hosts it without torchrun) or the launcher is gone"
                    )
                continue
            self._progress = now
            if value >= DONE:  # it finished: keep beating for this rank's own watcher, stop judging
                continue
            if value != last_value:
                last_value, last_seen = value, now
            stale = now - last_seen > self.timeout_s
            failed_since = (failed_since or now) if failed else None
            if failed_since is not None and (stale or now - failed_since > min(FAILED_GRACE_S, self.timeout_s)):
                self._abort(self.store.get(_FAILED).decode())
            elif stale:
                self._abort(
                    f"rank {watched} stopped responding (no heartbeat for {self.timeout_s:.0f} s: killed, out "
                    f"of memory or its node lost?)"
                )

    def _post_abort(self, reason: str) -> None:
        try:
            self.store.set(_ABORT, reason)
        except Exception:  # noqa: BLE001 - the others find out themselves
            pass

    def _abort(self, reason: str) -> None:
        poster = threading.Thread(target=self._post_abort, args=(reason,), daemon=True)
        poster.start()
        poster.join(timeout=2.0)  # a hung store must not keep this rank alive
        _exit_now(
            f"{self.prog}: error: rank {self.rank}: {reason}; stopping (parallel.peer_timeout_s={self.timeout_s:g})"
        )


_current: Optional[PeerMonitor] = None


def start_peer_monitor(timeout_s: float, prog: str) -> Optional[PeerMonitor]:
    """Start this rank's monitor when a process group of more than one rank exists and
    timeout_s > 0 (None otherwise). Call after init_distributed, on every rank."""
    global _current

    info = detect_launch()  # the job's ranks: with rollout ranks the default group spans only one role
    if timeout_s <= 0 or not dist.is_initialized() or info.world_size == 1:
        return None
    client = dist.TCPStore(
        info.master_addr,
        info.master_port,
        is_master=False,
        timeout=datetime.timedelta(seconds=max(timeout_s, 5.0)),
        wait_for_workers=False,
    )
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")  # torchrun keeps its store across restarts
    store = dist.PrefixStore(f"sppo/liveness/{restart}/", client)
    _current = PeerMonitor(store, info.rank, info.world_size, timeout_s, prog).start()
    return _current


def current_monitor() -> Optional[PeerMonitor]:
    return _current


#: how many heartbeat intervals a rank watches its peers before trusting that none died
PROBE_INTERVALS = 3


def report_peer_death(error: BaseException) -> None:
    """When `error` came out of a collective (gloo's "Connection closed by peer", a
    DistBackendError) because another rank died or failed, say that in this rank's one line and
    exit 1, as the monitor would a moment later; any other error returns to be handled as usual."""
    monitor = _current
    text = str(error).lower()
    collective = isinstance(error, dist.DistError) or any(s in text for s in ("gloo", "nccl", "connection"))
    if monitor is None or not isinstance(error, Exception) or not collective:
        return
    reason = monitor.failed_peer()
    if reason is None:
        silent = monitor.silent_peers(PROBE_INTERVALS * monitor.interval)
        if not silent:
            return
        reason = f"rank {silent[0]} stopped responding (killed, out of memory or its node lost?)"
    first = " ".join((str(error).strip().splitlines() or [type(error).__name__])[0].split())
    monitor._abort(f"{reason}; this rank's collective failed with {type(error).__name__}: {first[:200]}")


def stop_peer_monitor(error: Optional[BaseException] = None) -> None:
    """Stop this rank's monitor; with `error`, tell the others why this rank is leaving."""
    global _current
    if _current is None:
        return
    if error is not None:
        _current.mark_failed(f"{type(error).__name__}: {' '.join(str(error).split())}")
    _current.stop(clean=error is None)
    _current = None
