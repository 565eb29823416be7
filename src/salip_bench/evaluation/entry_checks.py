"""What every Hydra entry point (``salip-bench``, ``-tune``, ``-train``) checks before Hydra starts its job:
the overrides compose into a config, and the output folder can be created and written. Hydra itself
would report either as a traceback (exit 1) from inside its job runner; here each is one line and exit
status 2, like a bad setting.
"""
from __future__ import annotations

import errno
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from salip_bench.evaluation.interrupts import INTERRUPTED_STATUS, RunInterrupted, interrupted_message, requeue_if_asked

log = logging.getLogger("salip_bench")

# Hydra options after which the command line is not a plain run (help, config printing, multirun sweeps):
# those are left to Hydra.
HYDRA_FLAGS_LEFT_ALONE = ("-h", "--help", "--hydra-help", "-c", "--cfg", "-p", "--package", "-i", "--info",
                          "--shell-completion", "-sc", "--version", "-m", "--multirun", "-cn", "--config-name",
                          "-cp", "--config-path", "-cd", "--config-dir", "--experimental-rerun", "--resolve")


def output_dir_problem(path: Path | str, name: str = "output_dir") -> str | None:
    """Why ``path`` cannot serve as an output folder (None: it can): it exists as a file, a parent is a
    file, it cannot be created or written (no permission, read-only or full file system). Leaves no
    trace: folders created to find out are removed again.

    Args:
        path: the output folder.
        name: how the user set it (``output_dir``, ``--out``).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        return f"{name}={path} exists and is not a folder; choose another {name}"
    missing = []
    try:
        for folder in (path, *path.parents):
            if folder.exists():
                break
            missing.append(folder)
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".salip-bench-write-check-") as probe:
            probe.write(b"x" * 4096)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as err:
        reason = os.strerror(err.errno) if err.errno else str(err)
        hint = f"free some space or choose another {name}" if err.errno == errno.ENOSPC else f"choose another {name}"
        return f"{name}={path} cannot be written ({reason}: {err.filename or path}); {hint}"
    finally:
        for folder in missing:  # innermost first
            try:
                folder.rmdir()
            except OSError:
                break
    return None


def precheck(config_name: str, argv: list[str] | None = None) -> None:
    """Compose ``config_name`` with the command line's overrides and check its ``output_dir``; on a
    problem, log it in one line and exit with status 2 (before Hydra starts the job).

    Args:
        config_name: the entry point's primary config (``config``, ``tune``, ``train``).
        argv: the command line's arguments (default ``sys.argv[1:]``).
    """
    argv = sys.argv[1:] if argv is None else argv
    if any(arg.split("=", 1)[0] in HYDRA_FLAGS_LEFT_ALONE for arg in argv):
        return
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    conf = Path(__file__).resolve().parents[1] / "conf"
    try:
        with initialize_config_dir(config_dir=str(conf), version_base="1.3", job_name=config_name):
            cfg = compose(config_name=config_name, overrides=argv, return_hydra_config=True)
            out = OmegaConf.select(cfg, "hydra.run.dir")
    except (HydraException, OmegaConfBaseException, ValueError) as err:
        cause = f": {err.__cause__}" if err.__cause__ and str(err.__cause__) not in str(err) else ""
        fail(" ".join(f"{err}{cause}".split()))  # Hydra's message spans lines
    if out is not None:
        problem = output_dir_problem(out)
        if problem:
            fail(problem)


def fail(message: str) -> None:
    """Log ``message`` as the one line of a refused start and exit with status 2.

    Args:
        message: what is wrong and how to fix it.
    """
    logging.basicConfig(format="%(message)s")
    log.error("%s", message)
    sys.exit(2)


def oserror_line(err: OSError) -> str:
    """An OSError that reached an entry point (writing the output: full disk, permissions) in one line.

    Args:
        err: the error.
    """
    reason = os.strerror(err.errno) if err.errno else str(err)
    where = f": {err.filename}" if err.filename else ""
    hint = "; free some space and run the same command again to resume" if err.errno == errno.ENOSPC else ""
    return f"{type(err).__name__}: {reason}{where}{hint}"


@contextmanager
def one_line_exits(out_dir: Path | str, refusals: tuple[type[BaseException], ...]) -> Iterator[None]:
    """How an entry point's job ends when it cannot finish: a refusal (``refusals``: bad settings, missing
    weights, a busy folder) or an OSError (a full disk, permissions) is one line and exit status 2; a stop
    signal writes what was finished, says how to resume (requeueing a preempted SLURM job) and exits with
    :data:`~salip_bench.evaluation.interrupts.INTERRUPTED_STATUS`.

    Args:
        out_dir: the job's output folder, named in the interrupted message.
        refusals: the exception types that are the user's to fix, reported by their message alone.
    """
    try:
        yield
    except refusals as err:  # before OSError: a missing checkpoint may be a FileNotFoundError
        log.error("%s", err)
        sys.exit(2)
    except OSError as err:  # reading the data, writing the output: a full disk, a folder made read-only
        log.error("%s", oserror_line(err))
        sys.exit(2)
    except RunInterrupted as err:
        log.warning("%s", interrupted_message(err, out_dir))
        requeue_if_asked(err)
        sys.exit(INTERRUPTED_STATUS)
