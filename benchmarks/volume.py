"""3D by propagation: slice-by-slice SaLIP vs SaLIP on a few key slices + SAM 2.1 propagation, one volume.

Both sides are whole ``salip-bench`` runs (``harness.run``) of ``dataset=nnunet`` on the ct_abdomen dev set,
one organ, with a SAM 2.1 model of a released size and random weights (the smoke experiment's loose
quality thresholds, so candidates survive; NMS at the paper's 0.7) and every cache off, after a warm-up
run that builds the models. ``method=salip`` runs "segment everything", CLIP and a refinement on every
slice; ``method=salip_propagate`` runs them on every ``--every``-th slice and SAM 2's video predictor on
the rest. The script prints each run's work per volume and, last, ``volume speed-up: N.NNx``
(slice-by-slice seconds / propagated seconds).

  .venv/bin/python benchmarks/volume.py                                  # sam2_hiera_t, 32 points per side
  .venv/bin/python benchmarks/volume.py --points-per-side 16 --slices 10  # a quicker check
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import SHARED_DATA, clip_overrides, composed_config, quiet_harness_logs, table, timed_run, write_json


def config(args: argparse.Namespace, method: str, out: Path, slices: int) -> dict:
    overrides = ["experiment=smoke", f"model={args.model}", *clip_overrides(args.clip), "weights=random", "logger=none",
                 "cache.enabled=false", "trainer.enable_progress_bar=false", "dataset=nnunet",
                 f"dataset.root={args.data}", f"dataset.organs=[{args.organ}]", f"dataset.slice_range=[0,{slices}]",
                 f"generator.points_per_side={args.points_per_side}", "generator.box_nms_thresh=0.7",
                 f"method={method}", f"output_dir={out}", "resume.enabled=false"]
    if method == "salip_propagate":
        overrides.append(f"method.every={args.every}")
    return composed_config(overrides)



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="sam2_hiera_t", help="a SAM 2.1 conf/model/<name>.yaml (random weights)")
    parser.add_argument("--clip", default="tiny")
    parser.add_argument("--data", default=str(SHARED_DATA / "ct_abdomen"), help="an nnU-Net dataset folder")
    parser.add_argument("--organ", default="liver")
    parser.add_argument("--slices", type=int, default=30, help="the first N axial slices (ct_abdomen has 30)")
    parser.add_argument("--every", type=int, default=10, help="salip_propagate's SaLIP stride")
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--json", default=str(Path(__file__).resolve().parents[1] / "outputs" / "volume.json"))
    args = parser.parse_args()
    quiet_harness_logs()
    rows, seconds = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        timed_run(config(args, "salip_propagate", root / "warmup", 2), root / "warmup")  # builds SAM 2.1 and CLIP
        for method in ("salip", "salip_propagate"):
            seconds[method], summary = timed_run(config(args, method, root / method, args.slices), root / method)
            (volume, scores), = summary["per_volume"].items()
            work = scores["work"]
            rows.append([method, f"{seconds[method]:.2f}", scores["n_slices"], work["everything_passes"],
                         work["sam_encoder_passes"], work["propagation_frames"], work["clip_images_encoded"]])
    print(table(rows, ["method", "seconds", "slices", "everything passes", "SAM encoder passes",
                       "propagation frames", "CLIP images"]))
    print(f"volume: {volume}, model: {args.model} (random weights), clip: {args.clip}, "
          f"points per side: {args.points_per_side}, salip_propagate every {args.every}th slice")
    speedup = seconds["salip"] / seconds["salip_propagate"]
    write_json(Path(args.json), {"seconds": seconds, "speedup": speedup, "rows": rows, "args": vars(args)})
    print(f"volume speed-up: {speedup:.2f}x")


if __name__ == "__main__":
    main()
