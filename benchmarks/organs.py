"""Many organs, one pass: K single-organ runs vs one K-organ run over the same slices, side by side.

Both sides are whole ``salip-bench`` runs (``harness.run``) of ``dataset=nnunet`` on the ct_abdomen dev
set with random weights (the smoke experiment's loose thresholds, so candidates survive) and every cache off
(``cache.enabled=false``; the engines' in-memory embedding
memo is reset between runs), so only the sharing inside one run counts: a K-organ run computes each
slice's "segment everything" candidates and their CLIP embeddings once, and each organ adds only its
retrieval and its box-prompted refinement. The script checks that every organ's mask is identical in
both ways, prints a table and, last, ``organs speed-up: N.NNx`` (single-organ total / multi-organ).

  .venv/bin/python benchmarks/organs.py                                   # sam_vit_b (random), tiny CLIP
  .venv/bin/python benchmarks/organs.py --model sam_tiny --slices 2       # a quick smoke check
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from common import SHARED_DATA, clip_overrides, composed_config, quiet_harness_logs, table, timed_run, write_json

ORGANS = ["liver", "spleen", "kidney_left", "kidney_right", "stomach"]


def config(args: argparse.Namespace, organs: list[str], out: Path) -> dict:
    overrides = ["experiment=smoke", f"model={args.model}", *clip_overrides(args.clip), "weights=random", "logger=none",
                 "cache.enabled=false", "trainer.enable_progress_bar=false", "dataset=nnunet",
                 f"dataset.root={args.data}", f"dataset.organs=[{','.join(organs)}]",
                 f"dataset.slice_range=[{args.first},{args.first + args.slices}]",
                 f"generator.points_per_side={args.points_per_side}", f"output_dir={out}", "resume.enabled=false"]
    return composed_config(overrides)


def masks(out: Path) -> dict[str, np.ndarray]:
    found = {}
    for path in sorted((out / "masks").glob("*.png")):
        with Image.open(path) as png:
            found[path.stem] = np.asarray(png) > 0
    return found



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="sam_vit_b", help="conf/model/<name>.yaml (random weights)")
    parser.add_argument("--clip", default="tiny")
    parser.add_argument("--data", default=str(SHARED_DATA / "ct_abdomen"), help="an nnU-Net dataset folder")
    parser.add_argument("--organs", default=",".join(ORGANS))
    parser.add_argument("--first", type=int, default=12, help="first axial slice")
    parser.add_argument("--slices", type=int, default=3)
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--json", default=str(Path(__file__).resolve().parents[1] / "outputs" / "organs.json"))
    args = parser.parse_args()
    organs = args.organs.split(",")
    quiet_harness_logs()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        timed_run(config(argparse.Namespace(**{**vars(args), "slices": 1}), organs[:1], root / "warmup"),
                  root / "warmup")  # builds the models
        single_seconds, single_masks, rows = 0.0, {}, []
        for organ in organs:
            seconds, summary = timed_run(config(args, [organ], root / f"single_{organ}"), root / f"single_{organ}")
            single_seconds += seconds
            single_masks.update(masks(root / f"single_{organ}"))
            rows.append([f"single: {organ}", f"{seconds:.2f}", summary["work"].get("sam_encoder_passes"),
                         summary["work"].get("clip_images_encoded")])
        multi_seconds, summary = timed_run(config(args, organs, root / "multi"), root / "multi")
        multi_masks = masks(root / "multi")
        rows.append([f"one run, {len(organs)} organs", f"{multi_seconds:.2f}",
                     summary["work"].get("sam_encoder_passes"),
                     summary["work"].get("clip_images_encoded")])
    identical = single_masks.keys() == multi_masks.keys() and all(
        np.array_equal(single_masks[k], multi_masks[k]) for k in single_masks)
    speedup = single_seconds / multi_seconds
    print(table(rows + [[f"{len(organs)} single runs", f"{single_seconds:.2f}", "", ""]],
                ["run", "seconds", "SAM encoder passes", "CLIP images encoded"]))
    print(f"slices: {args.slices}, organs: {len(organs)}, samples: {len(multi_masks)}, model: {args.model}, "
          f"clip: {args.clip}, masks identical: {identical}")
    write_json(Path(args.json), {"single_seconds": single_seconds, "multi_seconds": multi_seconds, "speedup": speedup,
                                 "identical": identical, "args": vars(args)})
    if not identical:
        raise SystemExit("masks differ between single-organ and multi-organ runs")
    print(f"organs speed-up: {speedup:.2f}x")


if __name__ == "__main__":
    main()
