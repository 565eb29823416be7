"""What a run needs to know about the command that started it, read from Hydra once, at the entry point.

The harness takes a plain dict config and must behave the same whether Hydra started it or a library
caller did, so nothing below the entry points reads Hydra's global state: ``salip-bench`` and
``salip-bench-tune`` build a :class:`Job` with :meth:`Job.from_hydra` and pass it down; a library
caller gets the default (no overrides, not a multirun).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import lightning as L


@dataclass(frozen=True)
class Job:
    """The launching command, as far as a run cares.

    Args:
        overrides: its command-line overrides (``summary.json`` keeps them: the report labels runs by them).
        multirun: whether it is one job of a local Hydra multirun (``-m``).
    """

    overrides: list[str] = field(default_factory=list)
    multirun: bool = False

    @classmethod
    def from_hydra(cls) -> Job:
        """The Hydra job running now; the default :class:`Job` when Hydra runs none (a library call)."""
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if not HydraConfig.initialized():
            return cls()
        hydra = HydraConfig.get()
        return cls(overrides=list(hydra.overrides.task), multirun=hydra.mode == RunMode.MULTIRUN)


def check_launchable(trainer: L.Trainer, job: Job | None = None) -> None:
    """Refuses DDP inside a local Hydra multirun (``-m`` with the basic or joblib launcher).

    Lightning starts ranks 1..N-1 by re-running the command line, which under ``-m`` re-runs the
    whole sweep in every rank and mixes up jobs (Lightning-AI/pytorch-lightning#18175). Where the
    ranks are started by the cluster (SLURM tasks via hydra/launcher=slurm, torchrun) it is fine.

    Args:
        trainer: the Trainer about to predict.
        job: the launching command (None: a library call, never a multirun).

    Raises:
        ValueError: DDP with processes Lightning would start itself, inside a local multirun.
    """
    environment = getattr(trainer.strategy, "cluster_environment", None)
    if (trainer.world_size > 1 and environment is not None and not environment.creates_processes_externally
            and job is not None and job.multirun):
        raise ValueError("trainer=ddp cannot run inside a local multirun (-m): Lightning would re-run the whole "
                         "sweep in every rank. Run one DDP job per command, or sweep with hydra/launcher=slurm "
                         "(each job's ranks are then SLURM tasks)")
