"""bf16 autocast vs float32: the same SaLIP run twice, its speed and its Dice delta side by side.

Both runs go through ``salip_bench.evaluation.harness.run`` in this one process, on the same images and
(random) weights, with ``trainer.precision=32-true`` and ``trainer.precision=bf16-mixed`` (Lightning
autocast: SAM's and CLIP's networks in bf16, their outputs handed on as float32), interleaved
image by image after a warm-up. Printed and written as JSON: seconds per image of each, their
ratio, Dice against the ground truth of each and the mean and largest per-image Dice delta, and the
Dice between the two predicted masks (how much bf16 changes the answer).

With random weights Dice against the ground truth means nothing, but the delta and the agreement of
the two answers do: they are what bf16 costs in accuracy on these networks and images.

  .venv/bin/python benchmarks/precision.py        # CPU, tiny SAM and CLIP: a minute or two
  .venv/bin/python benchmarks/precision.py --device cuda --model sam_vit_h --clip ViT-L-14 --points-per-side 32
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from common import (
    harness_config,
    parser_with_common_args,
    quiet_harness_logs,
    table,
    write_json,
)
from salip_bench.engines.builder import build_engine
from salip_bench.evaluation.harness import run
from salip_bench.metrics import dice_iou

PRECISIONS = ("32-true", "bf16-mixed")


def parse_args() -> argparse.Namespace:
    parser = parser_with_common_args(__doc__, "sam_tiny", images=6, points_per_side=8,
                                     json_name="bench_precision.json")
    parser.add_argument("--device", default="cpu", help="Lightning accelerator: cpu or cuda")
    parser.add_argument("--pred-iou-thresh", type=float, default=0.05,
                        help="random weights: a few masks in ten pass, so CLIP sees tens of candidates, not thousands")
    return parser.parse_args()


def config(args: argparse.Namespace, precision: str, index: int, out: Path) -> dict:
    return harness_config(args, f"trainer.accelerator={args.device}", f"trainer.precision={precision}",
                          "cache.enabled=false", f"generator.pred_iou_thresh={args.pred_iou_thresh}",
                          f"limit={index + 1}", f"output_dir={out}")


def read_mask(out: Path, sample_id: str) -> np.ndarray:
    return np.asarray(Image.open(out / "masks" / f"{sample_id}.png")) > 0


def main() -> None:
    args = parse_args()
    quiet_harness_logs()
    seconds = dict.fromkeys(PRECISIONS, 0.0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        first = config(args, PRECISIONS[0], 0, root / "warm-up")
        build_engine(first["model"], first["weights"], "model", reuse=True)  # loaded once, as in a multirun; not timed
        build_engine(first["clip"], first["weights"], "clip", reuse=True)
        for precision in PRECISIONS:  # first passes of a process (allocator, kernels) are slow: not timed
            run(config(args, precision, 0, root / f"warm-up-{precision}"), root / f"warm-up-{precision}")
        for index in range(args.images):  # image by image, both precisions: load drift hits both alike
            for precision in PRECISIONS:  # limit=index+1 resumes: each call runs the one new image
                out = root / precision
                start = time.perf_counter()
                run(config(args, precision, index, out), out)
                seconds[precision] += time.perf_counter() - start
        rows = compare(root, args.images)
    n = len(rows)
    delta = [r["dice_bf16"] - r["dice_fp32"] for r in rows]
    speed = seconds["32-true"] / seconds["bf16-mixed"]
    print(f"\nSaLIP fp32 vs bf16 autocast, {args.model} + CLIP {args.clip} (random weights) on {args.device}, "
          f"{n} images of {args.data}, points_per_side={args.points_per_side}\n")
    print(table([[r["id"], r["dice_fp32"], r["dice_bf16"], r["dice_bf16"] - r["dice_fp32"], r["agreement"]]
                 for r in rows], ["image", "Dice fp32", "Dice bf16", "delta", "Dice(fp32 mask, bf16 mask)"]))
    print(f"\nseconds per image (whole run, incl. start-up): fp32 {seconds['32-true'] / n:.2f}, "
          f"bf16 {seconds['bf16-mixed'] / n:.2f}; fp32 / bf16 time: {speed:.2f}x")
    print(f"Dice delta bf16 - fp32: mean {np.mean(delta):+.4f}, largest |delta| {np.max(np.abs(delta)):.4f}; "
          f"masks identical {sum(r['agreement'] == 1.0 for r in rows)}/{n}, "
          f"mean Dice between the two masks {np.mean([r['agreement'] for r in rows]):.4f}")
    write_json(Path(args.json), {"args": vars(args), "seconds": seconds, "fp32_over_bf16_time": speed,
                                 "mean_dice_delta": float(np.mean(delta)), "per_image": rows})


def compare(root: Path, images: int) -> list[dict]:
    """Per image: Dice of each precision against the ground truth and Dice between their two masks."""
    import pandas as pd

    tables = {p: pd.read_csv(root / p / "results.csv").set_index("id") for p in PRECISIONS}
    for precision, results in tables.items():
        failed = results[results["status"] != "ok"]
        if len(failed):
            raise SystemExit(f"{precision}: {len(failed)} failed sample(s), e.g. {failed['failure'].iloc[0]}")
    rows = []
    for sample_id in tables["32-true"].index[:images]:
        fp32, bf16 = read_mask(root / "32-true", sample_id), read_mask(root / "bf16-mixed", sample_id)
        rows.append({"id": sample_id, "dice_fp32": float(tables["32-true"].loc[sample_id, "dice"]),
                     "dice_bf16": float(tables["bf16-mixed"].loc[sample_id, "dice"]),
                     "agreement": dice_iou(bf16, fp32)[0]})
    return rows


if __name__ == "__main__":
    main()
