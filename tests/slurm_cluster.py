"""A real one-machine SLURM cluster for tests: munged, slurmctld and slurmd on this host, loopback only.

Everything lives in one temporary directory (munge key and socket, slurm.conf, state, spool, logs) and
on free ports, so it does not touch a system SLURM or another test's cluster. Needs root (slurmd
starts jobs as their owner) and Debian's packages: ``apt-get install -y slurmctld slurmd slurm-client
munge`` (what ``.ci/run`` does). There is no accounting database: ``scontrol show job`` gives a job's
state, and MinJobAge keeps finished jobs visible to it.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Sequence

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "srun", "sinfo")
FINISHED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
            "BOOT_FAIL", "DEADLINE")


class SlurmUnavailable(Exception):
    """SLURM cannot run here (not installed, not root, a daemon would not start); the reason says which."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no {path.name})"


def missing_requirements() -> str | None:
    """Why this machine cannot start the cluster, or None when it can try."""
    if os.geteuid() != 0:
        return "needs root to start munged and slurmd (CI runs as root)"
    missing = [name for name in DAEMONS if shutil.which(name) is None and not Path("/usr/sbin", name).exists()]
    if missing:
        return (f"{', '.join(missing)} not installed (apt-get install -y slurmctld slurmd slurm-client munge; "
                ".ci/run does this)")
    return None


class SlurmCluster:
    """munged + slurmctld + slurmd in a temporary directory; ``submit`` and ``wait`` run jobs; ``stop`` ends
    the daemons and removes the directory."""

    def __init__(self) -> None:
        # Not under pytest's tmp_path: that sits in a 0700 directory the munge user cannot enter.
        self.root = Path(tempfile.mkdtemp(prefix="qtd-slurm-"))
        self.conf = self.root / "slurm.conf"
        self.munge_dir = self.root / "munge"
        self.socket = self.munge_dir / "munge.sock"
        self.procs: list[subprocess.Popen] = []
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))

    # -- start -------------------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> "SlurmCluster":
        try:
            why = missing_requirements()
            if why:
                raise SlurmUnavailable(why)
            self._start_munge(timeout)
            self._write_conf()
            for daemon in ("slurmctld", "slurmd"):
                log = open(self.root / "log" / f"{daemon}.out", "w")
                self.procs.append(subprocess.Popen([_sbin(daemon), "-D", "-f", str(self.conf)], env=self.env,
                                                   stdout=log, stderr=subprocess.STDOUT))
            self._wait_idle(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_munge(self, timeout: float) -> None:
        """munged as the munge user with its own key and socket; the socket's directory must be 0711."""
        self.munge_dir.mkdir(parents=True)
        key = self.munge_dir / "munge.key"
        key.write_bytes(os.urandom(128))
        key.chmod(0o600)
        self.munge_dir.chmod(0o711)
        self.root.chmod(0o755)
        shutil.chown(key, "munge", "munge")
        shutil.chown(self.munge_dir, "munge", "munge")
        files = {name: str(self.munge_dir / name) for name in ("munged.log", "munged.pid", "munged.seed")}
        out = open(self.root / "munged.out", "w")
        self.procs.append(subprocess.Popen(
            ["runuser", "-u", "munge", "--", _sbin("munged"), "--foreground", f"--socket={self.socket}",
             f"--key-file={key}", f"--log-file={files['munged.log']}", f"--pid-file={files['munged.pid']}",
             f"--seed-file={files['munged.seed']}"], stdout=out, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + timeout
        while not self.socket.exists():
            if self.procs[-1].poll() is not None or time.monotonic() > deadline:
                raise SlurmUnavailable(f"munged did not start:\n{_tail(self.root / 'munged.out')}\n"
                                       f"{_tail(self.munge_dir / 'munged.log')}")
            time.sleep(0.1)

    def _write_conf(self) -> None:
        """slurm.conf for this host: its short name, its CPUs and memory as ``slurmd -C`` reports them."""
        for sub in ("state", "spool", "log"):
            (self.root / sub).mkdir()
        host = subprocess.run(["hostname", "-s"], capture_output=True, text=True, check=True).stdout.strip()
        probe = subprocess.run([_sbin("slurmd"), "-C"], capture_output=True, text=True, env=self.env)
        node_line = next((line for line in probe.stdout.splitlines() if line.startswith("NodeName=")), None)
        if node_line is None:
            raise SlurmUnavailable(f"slurmd -C did not describe this host: {probe.stderr.strip()}")
        node_line = re.sub(r"\s*UpTime=\S+", "", node_line)
        root = self.root
        self.conf.write_text("\n".join([
            "ClusterName=qtdtest",
            f"SlurmctldHost={host}(127.0.0.1)",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.socket}",
            f"StateSaveLocation={root / 'state'}",
            f"SlurmdSpoolDir={root / 'spool'}",
            f"SlurmctldPidFile={root / 'slurmctld.pid'}",
            f"SlurmdPidFile={root / 'slurmd.pid'}",
            f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "MpiDefault=none",
            "ReturnToService=2",
            "MinJobAge=3600",
            f"{node_line} NodeAddr=127.0.0.1 State=UNKNOWN",
            f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP",
            ""]))

    def _wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise SlurmUnavailable(f"{Path(proc.args[0]).name} exited with {proc.returncode}:\n"
                                           f"{self.logs()}")
            result = subprocess.run(["sinfo", "--noheader", "--format=%t"], capture_output=True, text=True,
                                    env=self.env, timeout=30)
            state = result.stdout.strip()
            if state == "idle":
                return
            time.sleep(0.5)
        raise SlurmUnavailable(f"the node did not become idle within {timeout:.0f} s (sinfo: {state!r}):\n"
                               f"{self.logs()}")

    # -- jobs --------------------------------------------------------------------------------------
    def submit(self, script: Path, args: Sequence[str] = (), sbatch_args: Sequence[str] = (),
               env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
        """``sbatch [sbatch_args] script [args]`` with ``env`` (exported to the job); returns the job id."""
        result = subprocess.run(["sbatch", "--parsable", *sbatch_args, str(script), *args],
                                env={**(env or os.environ), "SLURM_CONF": str(self.conf)}, cwd=cwd,
                                capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise AssertionError(f"sbatch failed ({result.returncode}): {result.stderr}")
        return result.stdout.strip().split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (JobState, ExitCode, StdOut, ...)."""
        text = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True,
                              env=self.env, timeout=30).stdout
        return dict(re.findall(r"(\w+)=(\S*)", text))

    def wait(self, job_id: str, timeout: float) -> dict[str, str]:
        """Poll until the job has finished; cancel it and fail when it takes longer than ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.job(job_id)
            if info.get("JobState") in FINISHED:
                return info
            if time.monotonic() > deadline:
                subprocess.run(["scancel", job_id], env=self.env, timeout=30)
                raise AssertionError(f"job {job_id} still {info.get('JobState')} after {timeout:.0f} s\n"
                                     f"{self.logs()}")
            time.sleep(0.5)

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n{_tail(self.root / 'log' / name)}"
                         for name in ("slurmctld.log", "slurmd.log", "slurmctld.out", "slurmd.out"))

    # -- stop --------------------------------------------------------------------------------------
    def stop(self, remove: bool = True) -> None:
        """``scontrol shutdown`` ends slurmctld and slurmd; munged is ended by its PID. Every wait is bounded."""
        if self.conf.exists():
            subprocess.run(["scontrol", "shutdown"], env=self.env, capture_output=True, timeout=30)
        pid_file = self.munge_dir / "munged.pid"
        for proc in reversed(self.procs):
            if proc.args[0] == "runuser" and pid_file.exists():
                try:
                    os.kill(int(pid_file.read_text().strip()), 15)
                except (ValueError, ProcessLookupError):
                    pass
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self.procs.clear()
        if remove:
            shutil.rmtree(self.root, ignore_errors=True)


def _sbin(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))
