"""A real one-node SLURM cluster on loopback, for the profile test: munged, slurmctld and slurmd from Debian's
packages, with one fake GPU (gres File=/dev/null), started as child processes and stopped by PID.

Everything lives in one folder: config, munge key and socket, state, logs and the job-completion log that the
test reads to see which jobs SLURM ran and where. The executor plugin's job step runs ``srun`` with the
``SLURM_*`` variables removed (SLURM_CONF included), so ``srun`` finds the config only at its compiled-in path:
``/etc/slurm/slurm.conf`` is a symlink to ours while the cluster runs, and never replaces a file that is there.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
CPUS = 16  # what the node claims (config_overrides): the profile's 8-thread training jobs must fit
MEMORY_MB = 64000


def missing() -> str | None:
    """Why no cluster can be started here, or None."""
    absent = [d for d in DAEMONS if not (shutil.which(d) or Path(f"/usr/sbin/{d}").exists())]
    absent += [c for c in ("sbatch", "squeue", "srun", "sinfo") if not shutil.which(c)]
    if absent:
        return f"SLURM is not installed ({', '.join(absent)} missing; Debian: slurmctld slurmd slurm-client munge)"
    if os.geteuid() != 0:
        return "a one-node SLURM needs root here (slurmd starts job steps as their user)"
    if SYSTEM_CONF.is_symlink() and _leftover(SYSTEM_CONF):
        SYSTEM_CONF.unlink()  # left by a test run that was killed before it could stop its cluster
    if SYSTEM_CONF.exists() or SYSTEM_CONF.is_symlink():
        return f"{SYSTEM_CONF} exists: a SLURM is configured on this machine, and the test will not touch it"
    return None


MARKER = "# dp-medbench test cluster"


def _leftover(link: Path) -> bool:
    """A symlink to one of our test configs whose slurmctld is gone (no live process behind its PID file)."""
    target = Path(os.readlink(link))
    if not target.exists():
        return target.name == "slurm.conf"
    if not target.read_text().startswith(MARKER):
        return False
    pid_file = target.parent / "slurmctld.pid"
    try:
        os.kill(int(pid_file.read_text().split()[0]), 0)
    except (FileNotFoundError, ValueError, IndexError, ProcessLookupError):
        return True
    except PermissionError:
        return False
    return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _daemon(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


@dataclass
class Cluster:
    root: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def jobcomp(self) -> Path:
        return self.root / "log" / "jobcomp.txt"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def write_config(self) -> None:
        for sub in ("munge", "state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "munge").chmod(0o711)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o600)
        r = self.root
        self.conf.write_text(
            "\n".join(
                [
                    MARKER,
                    "ClusterName=dpmedbench",
                    "SlurmctldHost=localhost",
                    f"SlurmctldPort={_free_port()}",
                    f"SlurmdPort={_free_port()}",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    "AuthType=auth/munge",
                    "CredType=cred/munge",
                    f"AuthInfo=socket={r}/munge/socket",
                    f"StateSaveLocation={r}/state",
                    f"SlurmdSpoolDir={r}/spool",
                    f"SlurmctldPidFile={r}/slurmctld.pid",
                    f"SlurmdPidFile={r}/slurmd.pid",
                    f"SlurmctldLogFile={r}/log/slurmctld.log",
                    f"SlurmdLogFile={r}/log/slurmd.log",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "MpiDefault=none",
                    "MailProg=/bin/true",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_Core_Memory",
                    "GresTypes=gpu",
                    "SlurmdParameters=config_overrides",
                    "ReturnToService=2",
                    "SchedulerParameters=sched_interval=1",
                    # squeue (no slurmdbd here) must still see finished jobs when the plugin asks.
                    "MinJobAge=600",
                    "KillWait=10",
                    "JobCompType=jobcomp/filetxt",
                    f"JobCompLoc={self.jobcomp}",
                    f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={CPUS} RealMemory={MEMORY_MB} Gres=gpu:1 "
                    "State=UNKNOWN",
                    "PartitionName=main Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
                    "PartitionName=gpu Nodes=localhost MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )
        # Without File= the node is INVAL; /dev/null stands in for the device.
        (self.root / "gres.conf").write_text("NodeName=localhost Name=gpu File=/dev/null\n")

    def _start(self, name: str, *args: str) -> None:
        with open(self.root / "log" / f"{name}.out", "w") as out:  # the child keeps its own descriptor
            self.procs[name] = subprocess.Popen(
                [_daemon(name), *args], stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )

    def _wait(self, what: str, check, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    log = (self.root / "log" / f"{name}.out").read_text()[-2000:]
                    raise RuntimeError(f"{name} exited with {proc.returncode} while waiting for {what}:\n{log}")
            if check():
                return
            time.sleep(0.5)
        raise RuntimeError(f"timed out waiting for {what}; logs in {self.root / 'log'}")

    def start(self) -> None:
        self.write_config()
        m = self.root / "munge"
        self._start(
            "munged",
            "--foreground",
            "--force",
            f"--key-file={m}/munge.key",
            f"--socket={m}/socket",
            f"--pid-file={m}/munged.pid",
            f"--log-file={self.root}/log/munged.log",
            f"--seed-file={m}/munged.seed",
        )
        self._wait("munged", lambda: (m / "socket").exists())
        SYSTEM_CONF.parent.mkdir(parents=True, exist_ok=True)
        SYSTEM_CONF.symlink_to(self.conf)
        self._start("slurmctld", "-D", "-i", "-f", str(self.conf))
        self._wait("slurmctld", lambda: self._query("sinfo", "-h") is not None)
        self._start("slurmd", "-D", "-N", "localhost", "-f", str(self.conf))
        self._wait("an idle node", lambda: (self._query("sinfo", "-h", "-o", "%T") or "").strip() == "idle")

    def _query(self, *cmd: str) -> str | None:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=self.env, timeout=30)
        return proc.stdout if proc.returncode == 0 else None

    def stop(self) -> None:
        """Stop every daemon this cluster started, by PID, then drop the config symlink."""
        for name in reversed(DAEMONS):
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if SYSTEM_CONF.is_symlink() and Path(os.readlink(SYSTEM_CONF)) == self.conf:
            SYSTEM_CONF.unlink()

    def completed_jobs(self) -> list[dict[str, str]]:
        """One dict per finished job from the job-completion log (JobId, JobState, Partition, ProcCnt, ...)."""
        if not self.jobcomp.exists():
            return []
        jobs = []
        for line in self.jobcomp.read_text().splitlines():
            fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
            jobs.append(fields)
        return jobs
