"""``salip-bench``: the Hydra entry point of an evaluation run."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from salip_bench.models.weights import WeightsNotFoundError
from salip_bench.registry import PluginError
from salip_bench.tuned import TuningError

log = logging.getLogger("salip_bench")


@hydra.main(version_base="1.3", config_path=str(Path(__file__).resolve().parent / "conf"), config_name="config")
def _main(cfg: DictConfig) -> float | None:
    from salip_bench.harness import run  # heavy imports after argument parsing: --help stays fast

    out_dir = HydraConfig.get().runtime.output_dir
    try:
        summary = run(cfg, out_dir)
    except (WeightsNotFoundError, PluginError, TuningError) as err:
        log.error("%s", err)
        sys.exit(2)
    return summary.get("dice_mean")  # the value a Hydra sweeper optimises


def main() -> None:
    _main()


if __name__ == "__main__":
    main()
