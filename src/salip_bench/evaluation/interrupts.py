"""Stopping a run on SIGTERM / SIGINT (and SLURM's warning signal) without losing or half-writing a sample.

While :func:`stop_on_signals` is active, such a signal raises :class:`RunInterrupted` where the main
thread is: the sample being evaluated is dropped (it stays pending, see
:meth:`~salip_bench.evaluation.records.RecordStore.clear_own_markers`), the tables are written from
the records on disk, the lock is released, and the entry point exits with :data:`INTERRUPTED_STATUS`.
Inside :func:`deferred` (writing a record, writing the tables) the signal waits until the block ends,
so nothing is left half-written. A second signal while stopping is only logged.

``RunInterrupted`` derives from ``BaseException``, not ``Exception``: a method's or a sample's
``except Exception`` must not record it as that sample's failure. Lightning re-raises it after its
own clean-up (it swallows only ``KeyboardInterrupt``, exiting with status 1, which is why SIGINT is
handled here too).

Under SLURM, ``sbatch --signal=USR1@90`` asks for SIGUSR1 90 s before the time limit: the run stops
as above and requeues its job (``scontrol requeue``), which resumes where it stopped. With Hydra's
submitit launcher, submitit's own SIGUSR2 handler requeues the job (``hydra.launcher.signal_delay_s``);
its exit passes through the same clean-up, so the sample in flight is pending, not a crash.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

# EX_TEMPFAIL (sysexits.h): "a temporary failure; the user is invited to retry" - resume to continue.
INTERRUPTED_STATUS = 75
# SIGUSR1 only under SLURM, where it is the conventional "time is nearly up" warning (sbatch --signal).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class RunInterrupted(BaseException):  # it is not an error of the run
    """A stop signal arrived; raised in the main thread where it was running.

    Args:
        signum: the signal's number.
    """

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")

    @property
    def requeue(self) -> bool:
        """Whether the job asked to be requeued (SLURM's warning signal SIGUSR1)."""
        return self.signum == signal.SIGUSR1 and bool(slurm_job_id())


class _State:
    depth = 0  # nesting of deferred() blocks
    pending: int | None = None  # a signal that arrived inside one
    stopping = False  # a RunInterrupted was raised already
    owner: int | None = None  # the process that installed the handlers (DataLoader workers inherit them)


_state = _State()


def _handler(signum: int, frame: object) -> None:
    if os.getpid() != _state.owner:  # a forked DataLoader worker: the main process stops and reaps it
        return
    if _state.stopping:
        log.warning("%s received while stopping: finishing the tables, then exiting",
                    signal.Signals(signum).name)
        return
    if _state.depth:
        _state.pending = signum
        return
    _state.stopping = True
    raise RunInterrupted(signum)


def slurm_job_id() -> str | None:
    """The SLURM job to requeue (an array task as ``JOB_TASK``), or None outside SLURM."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn SIGTERM, SIGINT (and, under SLURM, SIGUSR1) into :class:`RunInterrupted` inside the block.

    Outside the main thread (signals cannot be handled there) it does nothing. Re-entrant: a nested
    block leaves the outer one's handlers in place.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signals = STOP_SIGNALS + ((signal.SIGUSR1,) if slurm_job_id() else ())
    previous = {s: signal.getsignal(s) for s in signals}
    if all(handler is _handler for handler in previous.values()):  # nested
        yield
        return
    _state.pending, _state.stopping, _state.owner = None, False, os.getpid()
    for s in signals:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        _state.pending, _state.stopping = None, False


@contextmanager
def deferred() -> Iterator[None]:
    """A block a stop signal does not cut short (writing a record, the tables): it is raised after it."""
    _state.depth += 1
    try:
        yield
    finally:
        _state.depth -= 1
        if not _state.depth and _state.pending is not None and not _state.stopping:
            signum, _state.pending = _state.pending, None
            _state.stopping = True
            raise RunInterrupted(signum)


def requeue_if_asked(err: RunInterrupted) -> bool:
    """Requeue this SLURM job when ``err`` came from SLURM's warning signal; returns whether it was.

    Args:
        err: the interruption.
    """
    if not err.requeue:
        return False
    job = slurm_job_id()
    try:
        done = subprocess.run(["scontrol", "requeue", str(job)], check=False, capture_output=True, text=True)
    except OSError as failure:
        log.warning("could not requeue SLURM job %s: %s", job, failure)
        return False
    if done.returncode:
        log.warning("could not requeue SLURM job %s: %s", job, done.stderr.strip())
        return False
    log.info("requeued SLURM job %s: it resumes where it stopped", job)
    return True


def interrupted_message(err: RunInterrupted, out_dir: object) -> str:
    """The one line an entry point prints for an interruption.

    Args:
        err: the interruption.
        out_dir: the run's (or tuning's) folder.
    """
    return (f"{err}: finished samples and the tables are in {out_dir}; interrupted, resume to continue "
            f"(run the same command again; exit status {INTERRUPTED_STATUS})")
