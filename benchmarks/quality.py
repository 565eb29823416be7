"""Does the quality score know when the U-Net fails? A trained U-Net evaluated on held-out images,
its label-free quality against its Dice: risk-coverage numbers per estimator.

Trains nothing itself: give it a checkpoint from ``salip-bench-train`` (trained on
``../shared/data/us_fetal_head_train``) and the held-out folder (``../shared/data/us_fetal_head``,
12 HC18 images, never seen in training). One ``method=unet`` run through the harness records every
``qc_*`` signal; each registered estimator that fits the U-Net is then scored from that run's
results.csv: normalised AURC (0 = random ranking, 1 = perfect), AURC, e-AURC, Spearman ρ between
quality and Dice (p-value) and failure AUROC. It exits with status 1 when the default estimator
ranks no better than random (normalised AURC <= 0 or ρ <= 0).

  salip-bench-train dataset=folder dataset.root=../shared/data/us_fetal_head_train output_dir=/tmp/unet
  .venv/bin/python benchmarks/quality.py --checkpoint /tmp/unet/unet.ckpt
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import pandas as pd
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from common import SHARED_DATA
from salip_bench.evaluation.harness import run
from salip_bench.evaluation.risk_coverage import risk_coverage
from salip_bench.qc.build import fitting_estimators
from salip_bench.registry import METHODS, QC, load_plugins
from salip_bench.types import Prediction, Sample

REPO = Path(__file__).resolve().parents[1]
KEYS = ("normalised_aurc", "aurc", "e_aurc", "aurc_optimal", "aurc_random", "spearman_rho", "spearman_p",
        "failure_auroc", "n_failures")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="unet.ckpt from salip-bench-train")
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "us_fetal_head")
    parser.add_argument("--out", type=Path, default=None, help="run folder (default: a temporary one)")
    parser.add_argument("--failure-dice", type=float, default=0.9,
                        help="Dice below which a prediction is a failure (0.9: a trained U-Net rarely drops below 0.5)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="quality_"))
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "method=unet", f"method.checkpoint={args.checkpoint}", "dataset=folder", f"dataset.root={args.data}",
            "logger=none", f"output_dir={out}", "resume=false"])
    run(OmegaConf.to_container(cfg, resolve=True), out)
    frame = pd.read_csv(out / "results.csv")
    frame = frame[frame["status"] == "ok"]
    load_plugins()
    method = METHODS.get("unet")
    rows = {}
    for name in fitting_estimators(method):
        estimator = QC.build({"name": name})
        quality = [estimator(Sample(r["id"], None, None), Prediction(None, info=r)) for r in frame.to_dict("records")]
        numbers = risk_coverage(quality, frame["dice"].tolist(), args.failure_dice)
        rows[name] = {k: numbers[k] for k in KEYS}
    print(f"U-Net {args.checkpoint} on {args.data}: {len(frame)} images, Dice mean {frame['dice'].mean():.4f} "
          f"(min {frame['dice'].min():.4f}); failure: Dice < {args.failure_dice}")
    table = pd.DataFrame(rows).T
    print(table.to_string(float_format=lambda v: f"{v:.4f}"))
    (out / "quality_benchmark.json").write_text(json.dumps(rows, indent=1))
    default = rows[method.default_qc]
    beats_random = (default["normalised_aurc"] or 0) > 0 and (default["spearman_rho"] or 0) > 0
    print(f"default estimator {method.default_qc}: normalised AURC {default['normalised_aurc']:.4f}, "
          f"rho {default['spearman_rho']:.4f} -> {'better than random' if beats_random else 'NOT better than random'}")
    return 0 if beats_random else 1


if __name__ == "__main__":
    sys.exit(main())
