"""``salip-bench``: the Hydra entry point of an evaluation run."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from salip_bench.evaluation.console import log_finished, quiet_console, removing_empty_output
from salip_bench.evaluation.entry_checks import one_line_exits, precheck
from salip_bench.evaluation.validation import ConfigError, validate

log = logging.getLogger("salip_bench")


@hydra.main(version_base="1.3", config_path=str(Path(__file__).resolve().parent / "conf"), config_name="config")
@removing_empty_output  # a run that fails before any work leaves no empty folder behind
def _main(cfg: DictConfig) -> float | None:
    try:  # before any heavy import: a bad setting is one line within seconds
        validate(cfg)
    except ConfigError as err:
        log.error("%s", err)
        sys.exit(2)
    quiet_console()
    # Heavy imports (torch, lightning, segment_anything, open_clip) only after the config is checked.
    from salip_bench.engines.weights import CheckpointError, WeightsNotFoundError
    from salip_bench.evaluation.harness import run
    from salip_bench.evaluation.job import Job
    from salip_bench.evaluation.run_lock import RunLockedError
    from salip_bench.evaluation.tuned import TuningError
    from salip_bench.registry import PluginError

    out_dir = HydraConfig.get().runtime.output_dir  # Hydra is read here and in Job.from_hydra, never below
    refusals = (WeightsNotFoundError, CheckpointError, PluginError, TuningError, ConfigError, RunLockedError)
    with one_line_exits(out_dir, refusals):
        summary = run(cfg, out_dir, Job.from_hydra())
    log_finished(summary, out_dir)
    return summary.get("dice_mean")  # the value a Hydra sweeper optimises


def main() -> None:
    precheck("config")  # overrides that do not compose, an unusable output_dir: one line, exit 2
    _main()


if __name__ == "__main__":
    main()
