"""Weights & Biases logging of a finished run: summary metrics, the per-image table, overlays.

Offline by default (files under ``<output_dir>/wandb``); nothing is uploaded unless mode=online.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from lightning.pytorch.loggers import WandbLogger

from salip_bench.evaluation.schema import SampleRecord, Summary
from salip_bench.types import Prediction, Sample


def make_wandb_logger(cfg: dict, out_dir: Path, run_config: dict, tags: list[str]) -> WandbLogger | None:
    """A Lightning ``WandbLogger`` for ``conf/logger/wandb.yaml`` (None when logger=none or mode=disabled)."""
    if cfg["name"] == "none" or cfg.get("mode") == "disabled":
        return None
    if cfg["name"] != "wandb":
        raise ValueError(f"unknown logger {cfg['name']!r}; known: wandb, none")
    os.environ.setdefault("WANDB_SILENT", "true")
    out_dir.mkdir(parents=True, exist_ok=True)
    logger = WandbLogger(project=cfg["project"], entity=cfg.get("entity"), name=cfg.get("run_name") or out_dir.name,
                         save_dir=str(out_dir), offline=cfg["mode"] == "offline", config=run_config, tags=tags,
                         mode=cfg["mode"])
    # Lightning always passes wandb.init an ``anonymous`` key (None when unset), and wandb warns that the
    # setting has no effect: a warning on every run that no setting of ours can silence.
    if logger._wandb_init.get("anonymous") is None:
        logger._wandb_init.pop("anonymous", None)
    return logger


def overlay_image(sample: Sample, prediction: Prediction, record: SampleRecord, max_side: int = 512):
    """A ``wandb.Image`` of the sample with GT and prediction masks and the retrieved boxes."""
    import wandb

    image = sample.image
    step = max(1, int(np.ceil(max(image.shape[:2]) / max_side)))  # subsample: logs stay small
    small = image[::step, ::step]
    masks = {"prediction": {"mask_data": prediction.mask[::step, ::step].astype(np.uint8),
                            "class_labels": {1: "prediction"}}}
    if sample.mask is not None:
        masks["ground_truth"] = {"mask_data": sample.mask[::step, ::step].astype(np.uint8),
                                 "class_labels": {1: "ground truth"}}
    boxes = [{"position": {"minX": float(b[0]) / step, "minY": float(b[1]) / step,
                           "maxX": float(b[2]) / step, "maxY": float(b[3]) / step},
              "domain": "pixel", "class_id": 1, "box_caption": "retrieved"} for b in prediction.boxes]
    dice = record.scores.get("dice")
    caption = f"{sample.id} dice={dice:.3f}" if dice is not None else f"{sample.id} (unlabelled)"
    return wandb.Image(small, masks=masks, boxes={"retrieved": {"box_data": boxes, "class_labels": {1: "retrieved"}}}
                       if boxes else None, caption=caption)


def typed_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The per-image table with numbers as numbers (so the W&B UI can sort and plot them) and strict
    JSON: columns that are numeric once empty cells are missing hold ints (integer columns) or floats,
    with None (JSON ``null``) where a sample has no finite value, never NaN / Infinity, which are not
    JSON; the rest is text ("" for empty)."""
    typed = {}
    for column in frame.columns:
        values = frame[column]
        numeric = pd.to_numeric(values, errors="coerce")
        if values.dtype != bool and numeric.notna().sum() == values.notna().sum():
            integer = pd.api.types.is_integer_dtype(values.dtype)  # Int64 / int64: counts, areas
            cast = int if integer else float
            typed[column] = pd.Series([cast(v) if pd.notna(v) and np.isfinite(float(v)) else None for v in numeric],
                                      index=frame.index, dtype=object)
        else:
            typed[column] = values.map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))
    return pd.DataFrame(typed, index=frame.index)


def log_run(logger: WandbLogger, summary: Summary | dict, frame: pd.DataFrame,
            kept: list[tuple[Sample, Prediction, SampleRecord]], pooled: dict | None = None) -> None:
    """Summary metrics, the pooled confusion counts, the per-image table and the overlays, then close the run.

    Args:
        logger: the run's W&B logger (finished here).
        summary: the run's summary (its JSON object is read through :class:`Summary`).
        frame: results.csv's table; kept: (sample, prediction, record) to draw as overlays.
        pooled: the predict module's torchmetrics counts over the samples this invocation scored, all
            DDP ranks summed, with their Dice / IoU (:attr:`PredictModule.pooled`), logged as ``pooled/*``.
    """
    summary = summary if isinstance(summary, Summary) else Summary.from_dict(summary)
    # Every number at the summary's top level (counts, score statistics, 3D means), as before.
    flat = {**summary.extra, **summary.stats.to_dict(), **summary.conventions}
    metrics = {k: v for k, v in flat.items() if isinstance(v, (int, float)) and v is not None}
    metrics.update({f"work/{k}": v for k, v in summary.work.items()})
    metrics.update({f"pooled/{k}": v for k, v in (pooled or {}).items()})
    logger.log_metrics(metrics)
    logger.experiment.summary.update(metrics)
    logger.log_table(key="per_image", dataframe=typed_table(frame))
    if kept:
        logger.experiment.log({"overlays": [overlay_image(s, p, r) for s, p, r in kept]})
    logger.experiment.finish()
