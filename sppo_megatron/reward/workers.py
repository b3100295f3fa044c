"""Killable scoring workers with a real per-sample deadline.

math-verify bounds its own time with signal.alarm (main thread only, and powers of huge
integers run inside C code that no signal interrupts), and user reward functions can hang, so
the only real bound is a process that can be killed. Each worker handles one sample at a
time over a pipe; the parent watches the deadlines and kills and replaces a worker that runs
past one (the sample scores 0.0 and counts as a timeout). Once `interrupted()` is true (a
preemption signal) every sample still running or queued is cut the same way, so a scorer
without a time limit cannot hold up the checkpoint. Workers are fresh interpreters
(worker_main.py), started lazily, stopped by close(), on garbage collection and at exit, and
killed by the kernel when the trainer dies.
"""

import os
import subprocess
import sys
import time
import weakref
from collections import deque
from multiprocessing.connection import Connection, wait
from typing import Callable, Dict, Hashable, NamedTuple, Optional

from sppo_megatron.reward.worker_main import READY

STARTUP_LIMIT_S = 120.0
_DIED = ("died", "reward worker exited unexpectedly")
_INTERRUPTED = "scoring cut short by a preemption signal"
_ENTRY = "from sppo_megatron.reward.worker_main import main; main()"
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Drained(NamedTuple):
    """A batch's outcome: scores by key, failures (the first error's message, else the first
    timeout's), and the extra metrics a custom function returned beside a score, by key."""

    results: dict
    timeouts: int
    errors: int
    first_error: Optional[str]
    extras: Dict[Hashable, Dict[str, float]]


def _worker_env() -> dict:
    """The parent's environment, with this checkout first on the path (it may not be installed)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    return env


class _Worker:
    def __init__(self, custom_spec: Optional[str]):
        task_r, task_w = os.pipe()
        reply_r, reply_w = os.pipe()
        argv = [sys.executable, "-c", _ENTRY, str(task_r), str(reply_w), str(os.getpid())]
        try:
            self.proc = subprocess.Popen(
                argv + ([custom_spec] if custom_spec else []),
                pass_fds=(task_r, reply_w),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=_worker_env(),
                start_new_session=True,
            )
        finally:
            os.close(task_r)
            os.close(reply_w)
        self.tasks = Connection(task_w, readable=False)
        self.conn = Connection(reply_r, writable=False)
        self.ready = False
        self.key: Optional[Hashable] = None
        self.deadline = time.monotonic() + STARTUP_LIMIT_S

    @property
    def idle(self) -> bool:
        return self.ready and self.key is None

    def send(self, key: Hashable, task: tuple, timeout_s: float) -> None:
        self.key = key
        self.deadline = time.monotonic() + timeout_s if timeout_s > 0 else float("inf")
        self.tasks.send(task)

    def stop(self, kill: bool) -> None:
        if not kill:
            try:
                self.tasks.send(None)
            except OSError:
                kill = True
        self.tasks.close()
        self.conn.close()
        if not kill:
            try:
                self.proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                kill = True
        if kill:
            self.proc.kill()
        self.proc.wait()


def _stop_all(workers: list) -> None:
    for worker in workers:
        worker.stop(kill=worker.key is not None)
    workers.clear()


class WorkerPool:
    """Runs scoring tasks in `num_workers` processes, each task under a `timeout_s` deadline.

    Tasks are ("math", answer, ground_truth) or ("custom", data_source, solution, ground_truth,
    extra_info). submit() queues, poll() makes progress without blocking longer than asked,
    drain() waits for everything and returns the results of this batch.
    timeout_s <= 0 disables the limit; `interrupted` (polled) cuts the batch short.
    """

    def __init__(
        self,
        num_workers: int,
        timeout_s: float,
        custom_spec: Optional[str] = None,
        interrupted: Optional[Callable[[], bool]] = None,
    ):
        self.num_workers = max(1, int(num_workers))
        self.timeout_s = float(timeout_s)
        self.custom_spec = custom_spec
        self.interrupted = interrupted or (lambda: False)
        self._workers: list[_Worker] = []
        self._queue: deque = deque()
        self._reset_batch()
        self._finalizer = weakref.finalize(self, _stop_all, self._workers)

    def _reset_batch(self) -> None:
        self.results: dict = {}
        self.extras: Dict[Hashable, Dict[str, float]] = {}
        self.timeouts = 0
        self.errors = 0
        self.first_error: Optional[str] = None
        self.first_timeout: Optional[str] = None

    @property
    def pending(self) -> bool:
        return bool(self._queue) or any(w.key is not None for w in self._workers)

    def submit(self, key: Hashable, task: tuple) -> None:
        self._queue.append((key, task))
        while len(self._workers) < self.num_workers:
            self._workers.append(_Worker(self.custom_spec))
        self._dispatch()

    def _dispatch(self) -> None:
        for worker in list(self._workers):
            if not self._queue:
                return
            if worker.idle:
                key, task = self._queue.popleft()
                try:
                    worker.send(key, task, self.timeout_s)
                except OSError:  # it died while idle (e.g. the OOM killer): retry on a new one
                    worker.key = None
                    self._queue.appendleft((key, task))
                    self._replace(worker)

    def _replace(self, worker: _Worker) -> None:
        worker.stop(kill=True)
        self._workers[self._workers.index(worker)] = _Worker(self.custom_spec)

    def _finish(
        self, worker: _Worker, score: float, error: Optional[str], extras: Optional[Dict[str, float]] = None
    ) -> None:
        self.results[worker.key] = score
        if extras:
            self.extras[worker.key] = extras
        worker.key = None
        if error is not None:
            self.errors += 1
            self.first_error = self.first_error or error

    def _time_out(self, key: Hashable, reason: str) -> None:
        self.results[key] = 0.0
        self.timeouts += 1
        self.first_timeout = self.first_timeout or reason

    def _receive(self, worker: _Worker) -> None:
        try:
            message = worker.conn.recv()
        except (EOFError, OSError):
            message = _DIED
        if not worker.ready:
            if message == READY:
                worker.ready = True
                return
            worker.stop(kill=True)
            self._workers.remove(worker)
            raise RuntimeError(f"reward worker failed to start: {message[1]}")
        if message is _DIED:
            try:
                code = worker.proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                code = None
            self._finish(worker, 0.0, f"{_DIED[1]} (exit code {code})")
            self._replace(worker)
        else:
            self._finish(worker, *message)

    def _expire(self, now: float) -> None:
        interrupted = self.interrupted()
        if interrupted:
            while self._queue:
                self._time_out(self._queue.popleft()[0], _INTERRUPTED)
        for worker in list(self._workers):
            if now <= worker.deadline and not (interrupted and worker.key is not None):
                continue
            if not worker.ready:
                worker.stop(kill=True)
                self._workers.remove(worker)
                raise RuntimeError(f"reward worker did not start within {STARTUP_LIMIT_S:.0f} s")
            if worker.key is not None:
                self._time_out(
                    worker.key,
                    _INTERRUPTED if interrupted else f"timed out after {self.timeout_s:g} s (reward.timeout_s)",
                )
                worker.key = None
                self._replace(worker)

    def poll(self, timeout: float = 0.0) -> None:
        """Collect finished results, enforce deadlines, hand out queued tasks."""
        waiting = [w for w in self._workers if not w.ready or w.key is not None]
        if not waiting:
            return
        now = time.monotonic()
        limit = min([timeout] + [max(0.0, w.deadline - now) for w in waiting])
        ready = wait([w.conn for w in waiting], limit)
        for worker in waiting:
            if worker.conn in ready:
                self._receive(worker)
        self._expire(time.monotonic())
        self._dispatch()

    def drain(self) -> Drained:
        """Wait for every submitted task; returns this batch's outcome."""
        while self.pending:
            self.poll(timeout=1.0)
        batch = Drained(self.results, self.timeouts, self.errors, self.first_error or self.first_timeout, self.extras)
        self._reset_batch()
        return batch

    def close(self) -> None:
        """Stop the workers (a later submit starts new ones)."""
        _stop_all(self._workers)
        self._queue.clear()
