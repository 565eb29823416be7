"""A 5-configuration retriever sweep (the paper's Tab. 3 ablation) with and without the feature cache.

Both sweeps run in this one process through ``salip_bench.harness.run``, as the jobs of a Hydra
multirun do (same reused SAM/CLIP engines, loaded before timing): 5 runs with
``cache.enabled=false`` and 5 runs with a fresh cache directory, interleaved. With the cache only
the first run pays SAM's encoder and decoder; the later runs read the proposals and embeddings back.

SAM is ViT-B-sized with random weights by default: with the tiny test SAM, SAM's work is so cheap
that CLIP and run overhead would dominate and the ratio would say little. Prints each run's
seconds and SAM encoder passes, the totals and their ratio, and whether the results agree; writes JSON.

  .venv/bin/python benchmarks/sweep_cache.py                     # sam_vit_b sizes, 2 images: a few minutes on CPU
  .venv/bin/python benchmarks/sweep_cache.py --model sam_tiny --images 4
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import (
    harness_config,
    parser_with_common_args,
    quiet_harness_logs,
    table,
    write_json,
)

from salip_bench.harness import run
from salip_bench.models.clip import build_clip
from salip_bench.models.sam import build_sam

RETRIEVERS = ("crop", "crop_expand", "box", "reverse_blur", "contour")


def parse_args() -> argparse.Namespace:
    return parser_with_common_args(__doc__, "sam_vit_b", images=2, points_per_side=4,
                                   json_name="bench_sweep_cache.json").parse_args()


def config(args: argparse.Namespace, retriever: str, out: Path, cache_dir: Path | None) -> dict:
    return harness_config(args, f"limit={args.images}", f"retriever={retriever}", f"output_dir={out}",
                          "cache.enabled=false" if cache_dir is None else f"cache.dir={cache_dir}")


def timed_run(args: argparse.Namespace, retriever: str, out: Path, cache_dir: Path | None) -> dict:
    cfg = config(args, retriever, out, cache_dir)
    start = time.perf_counter()
    summary = run(cfg, out)
    result = {"retriever": retriever, "seconds": time.perf_counter() - start,
              "sam_encoder_passes": summary["work"]["sam_encoder_passes"], "dice_mean": summary["dice_mean"]}
    print(f"{'cache' if cache_dir else 'no cache'} {result}", flush=True)
    return result


def sweeps(args: argparse.Namespace, root: Path) -> tuple[list[dict], list[dict]]:
    """The two sweeps, their runs interleaved (one without, one with the cache) so that load drift on
    a shared machine falls on both alike."""
    uncached, cached = [], []
    for retriever in RETRIEVERS:
        uncached.append(timed_run(args, retriever, root / "uncached" / retriever, None))
        cached.append(timed_run(args, retriever, root / "cached" / retriever, root / "cache"))
    return uncached, cached


def main() -> None:
    args = parse_args()
    quiet_harness_logs()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        first = config(args, RETRIEVERS[0], root / "warm-up", None)
        start = time.perf_counter()  # load the engines once, as the first job of a multirun would; not timed below
        build_sam(first["model"], first["weights"], reuse=True)
        build_clip(first["clip"], first["weights"], reuse=True)
        load_seconds = time.perf_counter() - start
        # The first SAM passes of a process are much slower on CPU (allocator, kernel set-up): warm up
        # on one image so neither sweep's first run carries that.
        run({**first, "limit": 1}, root / "warm-up")
        uncached, cached = sweeps(args, root)
    totals = {"uncached": sum(r["seconds"] for r in uncached), "cached": sum(r["seconds"] for r in cached)}
    ratio = totals["uncached"] / totals["cached"]
    rows = [[u["retriever"], u["seconds"], u["sam_encoder_passes"], c["seconds"], c["sam_encoder_passes"],
             u["dice_mean"] == c["dice_mean"]] for u, c in zip(uncached, cached)]
    rows.append(["total", totals["uncached"], sum(r["sam_encoder_passes"] for r in uncached), totals["cached"],
                 sum(r["sam_encoder_passes"] for r in cached), all(r[-1] for r in rows)])
    print(f"\n5-configuration retriever sweep, {args.model} + CLIP {args.clip} (random weights), {args.images} images "
          f"of {args.data}, points_per_side={args.points_per_side}; engines loaded ({load_seconds:.1f} s) and warmed "
          "up on one image beforehand, not counted\n")
    print(table(rows, ["retriever", "no cache s", "encoder passes", "cache s", "encoder passes", "same dice"]))
    print(f"\nsweep without cache / with cache: {ratio:.2f}x (target >= 4)")
    write_json(Path(args.json), {"args": vars(args), "uncached": uncached, "cached": cached, "totals": totals,
                                 "ratio": ratio, "engine_load_seconds": load_seconds})


if __name__ == "__main__":
    main()
