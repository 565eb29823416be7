"""What a run prints: one line per event, no library noise a user can do nothing about, the results'
place and headline numbers last, and no empty output folder left by a run that did no work.

The entry points call :func:`quiet_console` once, right after the config is checked, and wrap their
task function in :func:`removing_empty_output`. Hydra creates the run folder before the task function
starts, so :class:`OutputFolderGuard` (a Hydra callback in ``conf/config.yaml``) notes which folders
of that path did not exist yet.
"""
from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback

from salip_bench.evaluation.schema import METRICS

log = logging.getLogger(__name__)

# Lightning lines that say nothing a user can act on: an advertisement (LitLogger, litmodels) and
# accelerators this machine does not have (the GPU line stays: it says where the run computes).
_LIGHTNING_NOISE = ("💡 Tip:", "TPU available: False", "HPU available: False")
# Warnings raised inside libraries about their own calls (a user's setting cannot silence them):
# (message regex, category).
_LIBRARY_WARNINGS = (
    # torch deprecates LeafSpec; lightning's own _pytree still builds one in every predict step.
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    # torch deprecates torch.jit.script; SAM 2.1's released code scripts its position encoding with it.
    (r"`torch\.jit\.script` is deprecated", FutureWarning),
    # SAM 3's modules declare CUDA autocast at import; torch notes on a CPU machine that it is off.
    (r"CUDA is not available or torch_xla is imported\. Disabling autocast", UserWarning),
)
# Where each folder a run would create was found missing before Hydra created it (see OutputFolderGuard).
_created: set[Path] = set()
T = TypeVar("T")


class _DropLines(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(self.prefixes)


def quiet_console() -> None:
    """Route Lightning's lines through the run's one console handler (Hydra's job logging), drop its
    advertisements, keep matplotlib's font-cache note and library-internal deprecations off the console.

    Lightning's top package adds its own ``INFO: …`` console handler when imported, and its records
    also reach the root handler Hydra configured: every Lightning line printed twice. That handler goes
    when the root has one (under Hydra); a library caller without logging setup keeps Lightning's own.
    """
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # "generated new fontManager" on a first run
    for message, category in _LIBRARY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    import lightning  # noqa: F401  (its import adds the handler removed here)

    lightning_log = logging.getLogger("lightning")
    if logging.getLogger().handlers:
        for handler in list(lightning_log.handlers):
            if type(handler) is logging.StreamHandler:
                lightning_log.removeHandler(handler)
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropLines) for f in rank_zero.filters):
        rank_zero.addFilter(_DropLines(_LIGHTNING_NOISE))


def headline(summary: dict) -> str:
    """The run's headline numbers in one line: each metric's mean, then the sample counts.

    Args:
        summary: the run's summary.json object.
    """
    means = " ".join(f"{m}_mean={_short(summary.get(f'{m}_mean'))}" for m in METRICS)
    counts = " ".join(f"{k}={summary.get(k, 0)}" for k in ("n_ok", "n_failed", "n_unlabelled"))
    return f"{means} {counts}"


def _short(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def log_finished(summary: dict, out_dir: Path | str) -> None:
    """The last lines of a run: where its results are and its headline numbers (nothing on the DDP
    ranks that wrote no tables: their summary is empty)."""
    if not summary:
        return
    out_dir = Path(out_dir)
    written = [name for name in ("results.csv", "summary.json", "masks", "volumes") if (out_dir / name).exists()]
    log.info("results: %s (%s)", out_dir.resolve(), ", ".join(written))
    log.info("%s", headline(summary))


class OutputFolderGuard(Callback):
    """Hydra callback: before Hydra creates the run folder, note which folders of its path are missing,
    so that :func:`removing_empty_output` removes only folders this run created."""

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        try:  # resolving here also pins ${now:...}: Hydra then creates this very path
            run_dir = Path(str(config.hydra.run.dir)).absolute()
        except Exception:  # an interpolation only Hydra's job can resolve: guard nothing
            return
        for folder in (run_dir, *run_dir.parents):
            if folder.exists():
                break
            _created.add(folder)


def removing_empty_output(task: Callable[[Any], T]) -> Callable[[Any], T]:
    """Wrap a Hydra task function: if it leaves the run's output folder empty (it failed before any
    work), remove that folder and the parents this run created, when they are empty too. A folder that
    existed before the run is never removed.

    Args:
        task: the entry point's task function (under ``hydra.main``).
    """
    @functools.wraps(task)
    def wrapped(cfg: Any) -> T:
        out_dir = Path(HydraConfig.get().runtime.output_dir).absolute()
        try:
            return task(cfg)
        finally:
            folder = out_dir
            while folder in _created and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
                _created.discard(folder)
                folder = folder.parent

    return wrapped
