"""One rank of a fault-injection run for test_peer_liveness: gloo all_reduces in a loop, with
the trainer's peer monitor and preemption flag, until MODE strikes on rank VICTIM at the 3rd
step. Usage: python -m tests.peer_rank MODE VICTIM PEER_TIMEOUT_S

MODE kill: SIGKILL itself, after forking a sleeper that keeps its sockets open, as a lost node's
stay open (on one host the kernel would otherwise reset them and gloo would notice at once).
MODE stop: SIGSTOP itself (a hung rank; on rank 0 that also hangs the store it hosts).
MODE fail: leave by an exception, as the trainer does (stop_peer_monitor(error)), sleeper too.
MODE reset: SIGKILL itself without a sleeper: the kernel resets its sockets and the survivor's
gloo all_reduce raises, handled as sppo-train handles it (report_peer_death).
The sleeper's pid is printed as `sleeper PID` so the test can clean up.
"""

import os
import signal
import sys
import time

import torch
import torch.distributed as dist

from sppo_megatron.platform.liveness import report_peer_death, start_peer_monitor, stop_peer_monitor
from sppo_megatron.trainer.preemption import PreemptionFlag


def _fork_sleeper() -> None:
    pid = os.fork()
    if pid == 0:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)  # not the pipes the test reads to their end
        os.dup2(devnull, 2)
        time.sleep(30)
        os._exit(0)
    print(f"sleeper {pid}", flush=True)


def main() -> None:
    mode, victim, timeout_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    rank = int(os.environ["RANK"])
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{os.environ['MASTER_PORT']}",
        rank=rank,
        world_size=int(os.environ["WORLD_SIZE"]),
    )
    start_peer_monitor(timeout_s, "peer-rank")
    PreemptionFlag()
    print("ready", flush=True)
    value = torch.zeros(1)
    for step in range(10_000):
        if step == 3 and rank == victim:
            if mode == "stop":
                os.kill(os.getpid(), signal.SIGSTOP)
            if mode == "reset":
                os.kill(os.getpid(), signal.SIGKILL)
            _fork_sleeper()
            if mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            stop_peer_monitor(ValueError("boom"))
            sys.exit(1)
        try:
            dist.all_reduce(value)
        except Exception as e:
            report_peer_death(e)
            raise
        time.sleep(0.1)


if __name__ == "__main__":
    main()
