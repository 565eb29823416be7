"""Test-time tuning, today's way (one whole run per trial) vs image by image, side by side in one process.

Both run ``salip_bench.tune.tune`` on the same config, the shared HC18 *training* images as the
split (the evaluation dataset, never scored here, is only checked to be disjoint from it):

- today's: ``tune.reuse=false`` and no CLIP embedding cache (``cache.clip=false``): each trial is a
  ``harness.run``; the SAM feature cache (on by default) spares the encoder after the first trial,
  but every trial decodes every image again and CLIP embeds every candidate it keeps;
- new: ``tune.reuse=true`` with the CLIP cache: each image is decoded once per point grid, its
  masks upscaled once, each visual prompt embedded once, each distinct set of retrieved boxes
  prompted once and each distinct predicted mask scored once, whatever the number of trials.

Each gets a fresh feature-cache directory. The SAM is the released models' prompt encoder and
decoder (1024-px input) behind the tiny test encoder, as in ``benchmarks/pipeline.py``: on CPU the
decoder is what a trial repeats, and its size does not depend on the encoder. CLIP is a released
architecture (``--clip-arch``, default ViT-B-32; ViT-L-14 is ~10x slower a picture) with random
weights, so the CLIP share of a trial is real.

Random weights would make the default search space meaningless: their predicted IoUs are ~0 and
their masks' stability ~0, so no mask passes ``pred_iou_thresh`` in [0.5, 0.95] or
``stability_score_thresh`` in [0.7, 0.97]. The benchmark therefore rescales two output layers of the
random decoder, which changes no cost: the IoU head's last layer (x8, +0.75: predicted IoUs
~0.5-1.3) and the hypernetwork MLPs' last layers (x300: stability ~0.5-0.97), so the thresholds
keep some masks and drop others, as on a trained SAM. Box/crop NMS is off (random masks all span the
image, so any NMS below 1 would leave one). The search space is the default one, except that the
point grid choices are scaled down (``--grids``, default 2,4 instead of 16,32) so that a run fits
in minutes on a busy 2-core machine; the ratio grows with the grid (the decoder's share) and with the
number of trials per grid.

Prints, per path: wall seconds, grid decodings and decoder prompt batches, SAM encoder passes,
CLIP images encoded; whether trials.csv and tuned.yaml are identical; JSON; last line
``tuning speed-up: N.NNx`` (target >= 5).

  .venv/bin/python benchmarks/tune.py                         # 1 image, 20 trials (the default search space)
  .venv/bin/python benchmarks/tune.py --images 2 --trials 10 --grids 4,8
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from common import CONF, REPO, SHARED_DATA, quiet_harness_logs, table, write_json
from salip_bench.engines import sam_grid
from salip_bench.engines.builder import build_engine
from salip_bench.engines.sam_engine import SamV1Engine
from salip_bench.evaluation import harness  # noqa: F401 - imports Lightning (which sets its log level) before quiet_harness_logs
from salip_bench.evaluation.schema import CLIP_IMAGES_ENCODED, SAM_ENCODER_PASSES
from salip_bench.stages.generators import sam_everything
from salip_bench.tune import tune

RELEASED_DECODER = ["model.image_size=1024", "model.prompt_embed_dim=256", "model.decoder_depth=2",
                    "model.decoder_mlp_dim=2048", "model.decoder_num_heads=8"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", default=str(SHARED_DATA / "us_fetal_head_train"), help="the tuning images")
    parser.add_argument("--eval-data", default=str(SHARED_DATA / "us_fetal_head"),
                        help="the dataset tuned for (only checked to be disjoint from the split)")
    parser.add_argument("--images", type=int, default=1, help="tune.n_images")
    parser.add_argument("--trials", type=int, default=20, help="tune.n_trials (the default)")
    parser.add_argument("--grids", default="2,4", help="points_per_side choices (the default space has 16,32)")
    parser.add_argument("--clip-arch", default="ViT-B-32", help="an open_clip architecture (random weights)")
    parser.add_argument("--seed", type=int, default=0, help="tune.seed")
    parser.add_argument("--json", default=str(REPO / "outputs" / "bench_tune.json"))
    return parser.parse_args()


def tune_config(args: argparse.Namespace, out: Path, cache_dir: Path, reuse: bool) -> dict:
    grids = [int(g) for g in args.grids.split(",")]
    overrides = ["weights=random", "model=sam_tiny", *RELEASED_DECODER, "clip=vit_l14_openai",
                 f"clip.arch={args.clip_arch}", "logger=none", "dataset=folder", f"dataset.root={args.eval_data}",
                 "dataset.prompts=fetal_head", f"tune.split.root={args.split}", f"tune.n_images={args.images}",
                 f"tune.n_trials={args.trials}", f"tune.seed={args.seed}", f"tune.reuse={str(reuse).lower()}",
                 f"tune.space.generator.points_per_side={{choices:[{','.join(map(str, grids))}]}}",
                 f"generator.points_per_side={grids[0]}", "generator.box_nms_thresh=1.0",
                 "generator.crop_nms_thresh=1.0", "trainer.enable_progress_bar=false", f"output_dir={out}",
                 f"cache.dir={cache_dir}", f"cache.clip={str(reuse).lower()}"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return OmegaConf.to_container(compose(config_name="tune", overrides=overrides), resolve=True)


def calibrate(sam: SamV1Engine) -> None:
    """Rescale the random decoder's quality outputs into the search space's ranges (see the module docstring)."""
    decoder = sam.sam.mask_decoder
    with torch.no_grad():
        head = decoder.iou_prediction_head.layers[-1]
        head.weight.mul_(8)
        head.bias.mul_(8).add_(0.75)
        for mlp in decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(300)
            mlp.layers[-1].bias.mul_(300)


class DecoderCounter:
    """Counts the generator's grid decodings and decoder batches (prompts decoded together), and the
    refiner's box-prompt calls that reached SAM."""

    def __init__(self) -> None:
        self.grids = self.batches = self.prompts = self.box_calls = 0
        decode, initialize = sam_grid.decode_points_iou_first, sam_everything.SamEverythingGenerator.initialize
        segment_boxes = SamV1Engine.segment_boxes

        def counted_segment_boxes(engine, *rest):
            self.box_calls += 1
            return segment_boxes(engine, *rest)
        SamV1Engine.segment_boxes = counted_segment_boxes

        def counted_decode(model, features, points, *rest):
            self.batches += 1
            self.prompts += len(points)
            return decode(model, features, points, *rest)

        def counted_initialize(generator, *rest):
            self.grids += 1
            return initialize(generator, *rest)
        sam_grid.decode_points_iou_first = counted_decode
        sam_everything.SamEverythingGenerator.initialize = counted_initialize

    def take(self) -> dict:
        counts = {"grid_decodings": self.grids, "decoder_batches": self.batches, "prompts_decoded": self.prompts,
                  "refiner_box_calls": self.box_calls}
        self.grids = self.batches = self.prompts = self.box_calls = 0
        return counts


def timed_tune(args: argparse.Namespace, root: Path, name: str, reuse: bool, counter: DecoderCounter) -> dict:
    out = root / name
    cfg = tune_config(args, out, root / f"cache-{name}", reuse)
    counter.take()
    start = time.perf_counter()
    tuned = tune(cfg, out)
    seconds = time.perf_counter() - start
    work = [json.loads((out / "trials" / str(n) / "summary.json").read_text())["work"] for n in range(args.trials)]
    result = {"path": name, "seconds": seconds, **counter.take(),
              SAM_ENCODER_PASSES: sum(w[SAM_ENCODER_PASSES] for w in work),
              CLIP_IMAGES_ENCODED: sum(w[CLIP_IMAGES_ENCODED] for w in work),
              "chosen_trial": tuned["score"]["trial"], "dice_mean": tuned["score"]["dice_mean"],
              "trials_csv": (out / "trials.csv").read_text(), "tuned_yaml": (out / "tuned.yaml").read_text()}
    print(f"{name}: {seconds:.1f} s, {result['grid_decodings']} grid decodings, "
          f"{result['clip_images_encoded']} CLIP images", flush=True)
    return result


def main() -> None:
    args = parse_args()
    quiet_harness_logs()
    counter = DecoderCounter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        first = tune_config(args, root / "warm-up", root / "cache-warm-up", True)
        start = time.perf_counter()  # the engines, loaded once as a multirun's first job would; not timed below
        calibrate(build_engine(first["model"], first["weights"], "model", reuse=True))
        build_engine(first["clip"], first["weights"], "clip", reuse=True)
        load_seconds = time.perf_counter() - start
        warm = tune_config(args, root / "warm-up", root / "cache-warm-up", True)
        warm["tune"].update(n_trials=1)
        tune(warm, root / "warm-up")  # first passes of a process are slow (allocator, kernels): not in either path
        today = timed_tune(args, root, "today", False, counter)
        new = timed_tune(args, root, "image_by_image", True, counter)
    identical = {"trials_csv": today["trials_csv"] == new["trials_csv"],
                 "tuned_yaml": today["tuned_yaml"] == new["tuned_yaml"]}
    speedup = today["seconds"] / new["seconds"]
    keys = ("seconds", "grid_decodings", "decoder_batches", "prompts_decoded", "refiner_box_calls",
            SAM_ENCODER_PASSES, CLIP_IMAGES_ENCODED)
    print(f"\ntuning, {args.trials} trials x {args.images} image(s) of {args.split}, default space with grids "
          f"{args.grids}; SAM: tiny encoder + released decoder, CLIP {args.clip_arch} (random weights, calibrated "
          f"decoder outputs); engines loaded ({load_seconds:.1f} s) and warmed up beforehand, not counted\n")
    print(table([[k, today[k], new[k]] for k in keys], ["", "today (a run per trial)", "image by image"]))
    print(f"\ntrials.csv identical: {identical['trials_csv']}; tuned.yaml identical: {identical['tuned_yaml']}; "
          f"chosen trial {new['chosen_trial']} (dice_mean {new['dice_mean']})")
    write_json(Path(args.json), {"args": vars(args), "today": today, "image_by_image": new, "identical": identical,
                                 "speedup": speedup, "engine_load_seconds": load_seconds})
    print(f"tuning speed-up: {speedup:.2f}x")


if __name__ == "__main__":
    main()
