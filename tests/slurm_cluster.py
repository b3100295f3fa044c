"""A one-node Slurm cluster in a temporary directory (munged, slurmctld, slurmd as plain
processes, own sockets and ports), for tests that run sbatch / srun as an operator does.

The configuration is one measured to work on a small machine without cgroups (proctrack/pgid:
linuxproc left orphans and drained the node);
`SlurmCluster.start` raises `ClusterUnavailable` with the reason when the daemons cannot start
(no packages, not root, a daemon exiting), so tests skip with that reason.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from typing import Dict, List, Optional

DAEMONS = ("munged", "slurmctld", "slurmd")


class ClusterUnavailable(RuntimeError):
    """The daemons cannot run on this machine; the message says why."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlurmCluster:
    def __init__(self, root: str) -> None:
        self.root = root
        self.host = socket.gethostname().split(".")[0]
        self.munge_socket = os.path.join(root, "munge", "munge.socket")
        self.conf = os.path.join(root, "slurm.conf")
        self.env: Dict[str, str] = {**os.environ, "SLURM_CONF": self.conf}
        self._pid_files: List[str] = []

    def _write_conf(self) -> None:
        for sub in ("state", "spool", "munge"):
            os.makedirs(os.path.join(self.root, sub), exist_ok=True)
        r = self.root
        lines = [
            "ClusterName=sppotest",
            f"SlurmctldHost={self.host}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            f"StateSaveLocation={r}/state",
            f"SlurmdSpoolDir={r}/spool",
            f"SlurmctldPidFile={r}/slurmctld.pid",
            f"SlurmdPidFile={r}/slurmd.pid",
            f"SlurmctldLogFile={r}/slurmctld.log",
            f"SlurmdLogFile={r}/slurmd.log",
            "ProctrackType=proctrack/pgid",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "SchedulerType=sched/backfill",
            "MpiDefault=none",
            "ReturnToService=2",
            "JobCompType=jobcomp/none",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "KillWait=5",
            "MinJobAge=600",
            f"NodeName={self.host} CPUs={os.cpu_count()} RealMemory=4000 State=UNKNOWN",
            f"PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4",
        ]
        with open(self.conf, "w", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")

    def _daemon(self, argv: List[str], pid_file: str) -> None:
        self._pid_files.append(pid_file)
        out = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=30)
        if out.returncode != 0:
            raise ClusterUnavailable(
                f"{os.path.basename(argv[0])} did not start: {(out.stderr or out.stdout).strip()[-300:]}"
            )

    def start(self) -> "SlurmCluster":
        missing = [d for d in DAEMONS if shutil.which(d) is None and not os.path.exists(f"/usr/sbin/{d}")]
        if missing:
            raise ClusterUnavailable(f"{', '.join(missing)} not installed (apt-get install slurm-wlm munge)")
        if os.geteuid() != 0:
            raise ClusterUnavailable("slurmd must run as root here")
        key = "/etc/munge/munge.key"
        if not os.path.isfile(key):
            raise ClusterUnavailable(f"no munge key ({key}; create it with mungekey)")
        self._write_conf()
        m = os.path.join(self.root, "munge")
        self._daemon(
            [
                "/usr/sbin/munged",
                f"--socket={self.munge_socket}",
                f"--key-file={key}",
                f"--pid-file={m}/munged.pid",
                f"--log-file={m}/munged.log",
                f"--seed-file={m}/munged.seed",
                "--force",
            ],
            f"{m}/munged.pid",
        )
        self._daemon(["/usr/sbin/slurmctld"], f"{self.root}/slurmctld.pid")
        self._daemon(["/usr/sbin/slurmd"], f"{self.root}/slurmd.pid")
        deadline = time.time() + 60
        while time.time() < deadline:
            state = self.run(["sinfo", "-h", "-o", "%T"], check=False).stdout.strip()
            if state.startswith("idle"):
                return self
            time.sleep(0.5)
        raise ClusterUnavailable(f"the node did not become idle (sinfo: {state!r}); see {self.root}/slurmd.log")

    def run(self, argv: List[str], check: bool = True, timeout: int = 60, **kw) -> subprocess.CompletedProcess:
        out = subprocess.run(
            argv, env={**self.env, **kw.pop("env", {})}, capture_output=True, text=True, timeout=timeout, **kw
        )
        if check and out.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited {out.returncode}: {out.stderr.strip()}")
        return out

    def job_field(self, job_id: str, field: str) -> Optional[str]:
        out = self.run(["scontrol", "-o", "show", "job", job_id], check=False).stdout
        for item in out.split():
            if item.startswith(field + "="):
                return item.split("=", 1)[1]
        return None

    def stop(self) -> None:
        """Stop the daemons by the PIDs in their pid files (newest first)."""
        for pid_file in reversed(self._pid_files):
            try:
                with open(pid_file, encoding="utf-8") as fh:
                    pid = int(fh.read().strip())
            except (OSError, ValueError):
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            for _ in range(50):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                os.kill(pid, signal.SIGKILL)
