"""One run per output directory: a lock file naming its holder, with stale-holder detection.

Two processes writing one ``output_dir`` would each compute every sample (last writer wins). The
lock is ``output_dir/.salip-bench.lock``, created atomically (``O_CREAT | O_EXCL``) and holding the
holder's host, pid and process start time. A lock whose holder is gone (same host, and no process
with that pid, or a pid since reused by another process) is stale and taken over with a warning;
a lock from another host cannot be checked and is respected. An advisory ``flock`` would vanish
with its process by itself, but is unreliable on the network file systems clusters write to.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_NAME = ".salip-bench.lock"


class RunLockedError(RuntimeError):
    """Another live run holds the output directory."""


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of a process: with the pid it identifies a process even after pid reuse.

    Args:
        pid: the process id.

    Returns:
        ``/proc/<pid>/stat`` field 22 (clock ticks since boot), None where unknown (no /proc, gone).
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # fields after "(comm)", which may hold spaces


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (signal 0 probes without signalling)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


class RunLock:
    """``with RunLock(out_dir): ...`` holds ``out_dir`` for this process (re-entrant within it).

    Args:
        out_dir: the run's output directory (created if missing).

    Raises:
        RunLockedError: on entering, naming the live holder.
    """

    def __init__(self, out_dir: Path | str) -> None:
        self.path = Path(out_dir) / LOCK_NAME
        self.held = False

    def holder(self) -> dict | None:
        """The lock's content: None when there is no lock, ``{}`` when it cannot be read (yet)."""
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError):
            return {}  # being written right now, or garbage: decided by its age below

    def is_stale(self, holder: dict) -> bool:
        """Whether the lock's ``holder`` is gone, so that the lock may be taken over.

        Args:
            holder: what :meth:`holder` read.
        """
        if not holder:  # unreadable: a writer is between create and write, unless it is old
            try:
                return time.time() - self.path.stat().st_mtime > 60
            except FileNotFoundError:
                return True
        if holder.get("host") != socket.gethostname():
            return False
        pid = int(holder.get("pid", -1))
        if pid <= 0 or not pid_alive(pid):
            return True
        started = holder.get("process_start")
        return started is not None and process_start_time(pid) not in (None, started)

    def acquire(self) -> None:
        """Take the lock, a stale one included (with a warning), or raise :class:`RunLockedError`."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"host": socket.gethostname(), "pid": os.getpid(), "process_start": process_start_time(os.getpid()),
              "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self.holder()
                if holder is None:
                    continue  # released meanwhile
                if all(holder.get(k) == me[k] for k in ("host", "pid", "process_start")):
                    self.held = False  # ours already (a nested run in this process): leave it to the outer one
                    return
                if not self.is_stale(holder):
                    raise RunLockedError(
                        f"output_dir {self.path.parent} is in use by another salip-bench run (pid "
                        f"{holder.get('pid')} on {holder.get('host')} since {holder.get('since')}); wait for it to "
                        f"finish or choose another output_dir (if no such run exists, delete {self.path})") from None
                log.warning("taking over the stale lock %s of pid %s (no longer running)", self.path, holder.get("pid"))
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as handle:
                json.dump(me, handle)
            self.held = True
            return
        raise RunLockedError(f"could not take the lock {self.path}: it keeps changing hands")

    def release(self) -> None:
        """Remove the lock if this process took it (not when an outer run in this process holds it)."""
        if self.held:
            holder = self.holder()
            if holder and holder.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
