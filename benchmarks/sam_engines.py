"""Seconds per image of each SAM-family engine's roles, random weights (tiny and released sizes):
process CPU seconds (all threads; what a shared machine's load does not inflate) and wall seconds.

    .venv/bin/python benchmarks/sam_engines.py sam2_tiny medsam_tiny sam2_hiera_l medsam_vit_b --points-per-side 4

For each model: build time, then on one image of the folder dataset ``--data`` the everything role
(``--points-per-side``² points, quality filters off) where the engine has it, and ``segment_boxes``
with one box on a fresh engine state (so it includes the encoder pass; MedSAM has only this role).
Prints a table and writes JSON; numbers belong in notes, not in tests.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from common import SHARED_DATA
from salip_bench.datasets.folder import FolderDataset
from salip_bench.engines.builder import build_engine
from salip_bench.engines.roles import BoxPromptSegmenter, EverythingGenerator

REPO = Path(__file__).resolve().parents[1]


class Clock:
    """Wall and process-CPU seconds of a block."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *_: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def measure(name: str, image: np.ndarray, points_per_side: int) -> dict:
    """Seconds to build ``conf/model/<name>.yaml`` with random weights and to run each of its roles once."""
    cfg = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "model" / f"{name}.yaml"), resolve=True)
    with Clock() as clock:
        engine = build_engine(cfg, "random")
    row = {"model": name, "build_s": clock.wall}
    height, width = image.shape[:2]
    box = np.array([[width * 0.2, height * 0.2, width * 0.8, height * 0.8]], np.float32)
    with torch.no_grad():
        if isinstance(engine, EverythingGenerator):
            with Clock() as clock:
                candidates = engine.everything(image, points_per_side=points_per_side, pred_iou_thresh=0.0,
                                               stability_score_thresh=0.0)
            row.update(everything_s=clock.wall, everything_cpu_s=clock.cpu, candidates=len(candidates))
            engine.reset()
        if isinstance(engine, BoxPromptSegmenter):
            with Clock() as clock:
                engine.segment_boxes(image, box, False)
            row.update(boxes_s=clock.wall, boxes_cpu_s=clock.cpu)
    row["counters"] = engine.counters()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="conf/model/<name>.yaml names")
    parser.add_argument("--data", default=str(SHARED_DATA / "us_fetal_head"))
    parser.add_argument("--points-per-side", type=int, default=4)
    parser.add_argument("--json", default=str(REPO / "outputs" / "sam_engines.json"))
    args = parser.parse_args()
    image = FolderDataset(args.data)[0].image
    rows = [measure(name, image, args.points_per_side) for name in args.models]
    print(f"image {image.shape[1]}x{image.shape[0]}, {args.points_per_side}^2 points, torch threads "
          f"{torch.get_num_threads()}")
    print(f"{'model':<16}{'build s':>9}{'everything cpu/wall s':>23}{'boxes cpu/wall s':>19}  counters")
    nan = float("nan")
    for row in rows:
        print(f"{row['model']:<16}{row['build_s']:>9.2f}"
              f"{row.get('everything_cpu_s', nan):>13.2f}/{row.get('everything_s', nan):<9.2f}"
              f"{row.get('boxes_cpu_s', nan):>9.2f}/{row.get('boxes_s', nan):<9.2f}  {row['counters']}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
