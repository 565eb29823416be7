"""Sweeps with and without the feature cache: a 5-configuration retriever sweep (the paper's Tab. 3
ablation) and a filter sweep (Tab. 6: no filter, then the area filter at three thresholds).

Each sweep runs in this one process through ``salip_bench.evaluation.harness.run``, as the jobs of a Hydra
multirun do (same reused SAM/CLIP engines, loaded before timing): its runs with
``cache.enabled=false`` and with a fresh cache directory, interleaved. With the cache only the
first run pays SAM's encoder and decoder; the later runs read the proposals and embeddings back.
In the filter sweep the later runs also encode no CLIP image: every candidate an area filter keeps
was embedded by the unfiltered first job (that is why ``experiment=tab6`` sweeps ``none`` first).

SAM is ViT-B-sized with random weights by default: with the tiny test SAM, SAM's work is so cheap
that CLIP and run overhead would dominate and the ratio would say little. Prints each run's
seconds, SAM encoder passes and CLIP images encoded, the totals and their ratio, and whether the
results agree; writes JSON.

  .venv/bin/python benchmarks/sweep_cache.py                     # sam_vit_b sizes, 2 images: minutes on CPU
  .venv/bin/python benchmarks/sweep_cache.py --model sam_tiny --images 4
  .venv/bin/python benchmarks/sweep_cache.py --sweeps filters --clip ViT-B-32   # Tab. 6 with a released-size CLIP
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
from salip_bench.engines.builder import build_engine
from salip_bench.evaluation.harness import run
from salip_bench.evaluation.schema import CLIP_IMAGES_ENCODED, SAM_ENCODER_PASSES

# Each sweep: (job label, its overrides), in the order a multirun runs them.
SWEEPS = {
    "retrievers": [(name, [f"retriever={name}"]) for name in ("crop", "crop_expand", "box", "reverse_blur", "contour")],
    "filters": [("none", ["filter=none", "~filter.max_area"]),
                *((f"area {t}", ["filter=area", f"filter.max_area={t}"]) for t in (0.9, 0.8, 0.7))],
}


def parse_args() -> argparse.Namespace:
    parser = parser_with_common_args(__doc__, "sam_vit_b", images=2, points_per_side=4,
                                     json_name="bench_sweep_cache.json")
    parser.add_argument("--sweeps", default="retrievers,filters", help=f"comma-separated, of {sorted(SWEEPS)}")
    return parser.parse_args()


def config(args: argparse.Namespace, job: list[str], out: Path, cache_dir: Path | None) -> dict:
    return harness_config(args, f"limit={args.images}", *job, f"output_dir={out}",
                          "cache.enabled=false" if cache_dir is None else f"cache.dir={cache_dir}")


def timed_run(args: argparse.Namespace, label: str, job: list[str], out: Path, cache_dir: Path | None) -> dict:
    cfg = config(args, job, out, cache_dir)
    start = time.perf_counter()
    summary = run(cfg, out)
    result = {"job": label, "seconds": time.perf_counter() - start,
              SAM_ENCODER_PASSES: summary["work"][SAM_ENCODER_PASSES],
              CLIP_IMAGES_ENCODED: summary["work"][CLIP_IMAGES_ENCODED], "dice_mean": summary["dice_mean"]}
    print(f"{'cache' if cache_dir else 'no cache'} {result}", flush=True)
    return result


def sweep(args: argparse.Namespace, name: str, root: Path) -> tuple[list[dict], list[dict]]:
    """One sweep without and with the cache, their runs interleaved (one without, one with) so that
    load drift on a shared machine falls on both alike."""
    uncached, cached = [], []
    for number, (label, job) in enumerate(SWEEPS[name]):
        uncached.append(timed_run(args, label, job, root / name / "uncached" / str(number), None))
        cached.append(timed_run(args, label, job, root / name / "cached" / str(number), root / name / "cache"))
    return uncached, cached


def report(args: argparse.Namespace, name: str, uncached: list[dict], cached: list[dict]) -> dict:
    totals = {"uncached": sum(r["seconds"] for r in uncached), "cached": sum(r["seconds"] for r in cached)}
    ratio = totals["uncached"] / totals["cached"]
    keys = ("seconds", SAM_ENCODER_PASSES, CLIP_IMAGES_ENCODED)
    rows = [[u["job"], *(u[k] for k in keys), *(c[k] for k in keys), u["dice_mean"] == c["dice_mean"]]
            for u, c in zip(uncached, cached)]
    rows.append(["total", *(sum(r[k] for r in uncached) for k in keys), *(sum(r[k] for r in cached) for k in keys),
                 all(r[-1] for r in rows)])
    later = {k: sum(r[k] for r in cached[1:]) for k in (SAM_ENCODER_PASSES, CLIP_IMAGES_ENCODED)}
    print(f"\n{len(uncached)}-job {name} sweep, {args.model} + CLIP {args.clip} (random weights), {args.images} images "
          f"of {args.data}, points_per_side={args.points_per_side}\n")
    print(table(rows, ["job", "no cache s", "SAM passes", "CLIP images", "cache s", "SAM passes", "CLIP images",
                       "same dice"]))
    print(f"{name} sweep without cache / with cache: {ratio:.2f}x; jobs after the first, with the cache: "
          f"{later['sam_encoder_passes']} SAM encoder passes, {later['clip_images_encoded']} CLIP images encoded")
    return {"uncached": uncached, "cached": cached, "totals": totals, "ratio": ratio, "later_jobs_cached": later}


def main() -> None:
    args = parse_args()
    names = args.sweeps.split(",")
    unknown = sorted(set(names) - set(SWEEPS))
    if unknown:
        raise SystemExit(f"unknown sweep(s) {unknown}; known: {sorted(SWEEPS)}")
    quiet_harness_logs()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        first = config(args, SWEEPS[names[0]][0][1], root / "warm-up", None)
        start = time.perf_counter()  # load the engines once, as the first job of a multirun would; not timed below
        build_engine(first["model"], first["weights"], "model", reuse=True)
        build_engine(first["clip"], first["weights"], "clip", reuse=True)
        load_seconds = time.perf_counter() - start
        # The first SAM passes of a process are much slower on CPU (allocator, kernel set-up): warm up
        # on one image so neither sweep's first run carries that.
        run({**first, "limit": 1}, root / "warm-up")
        for name in names:
            results[name] = sweep(args, name, root)
    print(f"\nengines loaded ({load_seconds:.1f} s) and warmed up on one image beforehand, not counted")
    summary = {name: report(args, name, *results[name]) for name in names}
    if "retrievers" in summary:
        print(f"\nsweep without cache / with cache: {summary['retrievers']['ratio']:.2f}x (target >= 4)")
    write_json(Path(args.json), {"args": vars(args), **summary, "engine_load_seconds": load_seconds})


if __name__ == "__main__":
    main()
