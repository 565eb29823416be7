"""Per-sample result columns beyond the overlap and boundary metrics, chosen by name in config
(``dataset.extra_metrics``, e.g. HC18's ``[head_circumference]``) and computed from the data the
dataset puts in each sample's ``meta``.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import cv2
import numpy as np

from salip_bench.types import Sample

ExtraMetric = Callable[[Sample, np.ndarray], dict]


def ellipse_circumference(mask: np.ndarray) -> float | None:
    """Perimeter in pixels of the ellipse fitted to the largest outer contour of ``mask``
    (Ramanujan's approximation), or None when the mask has no contour of at least 5 points."""
    contours, _ = cv2.findContours(np.ascontiguousarray(mask, dtype=np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_NONE)
    if not contours:
        return None
    largest = max(contours, key=cv2.contourArea)
    if len(largest) < 5:  # fitEllipse needs five points
        return None
    _, (width, height), _ = cv2.fitEllipse(largest)
    a, b = width / 2, height / 2
    return math.pi * (3 * (a + b) - math.sqrt((3 * a + b) * (a + 3 * b)))


def head_circumference(sample: Sample, prediction: np.ndarray) -> dict:
    """HC18's columns: ``hc_pred_mm`` (circumference of the ellipse fitted to the predicted mask's
    largest contour × ``meta["pixel_size_mm"]``), ``hc_ref_mm`` (``meta["hc_ref_mm"]``, the reference)
    and ``hc_abs_err_mm``; each None when it cannot be computed (no pixel size, no reference, empty
    prediction).

    Args:
        sample: the evaluated sample (its meta as :class:`~salip_bench.datasets.hc18.HC18Dataset` fills it).
        prediction: (H, W) bool predicted mask at the sample's resolution.
    """
    pixel_size, reference = sample.meta.get("pixel_size_mm"), sample.meta.get("hc_ref_mm")
    circumference = ellipse_circumference(prediction)
    predicted = circumference * pixel_size if circumference is not None and pixel_size is not None else None
    error = abs(predicted - reference) if predicted is not None and reference is not None else None
    return {"hc_pred_mm": predicted, "hc_ref_mm": reference, "hc_abs_err_mm": error}


EXTRA_METRICS: dict[str, ExtraMetric] = {"head_circumference": head_circumference}
# The columns each writes: results.csv has them for every sample, empty where a sample has no value.
EXTRA_COLUMNS: dict[str, tuple[str, ...]] = {"head_circumference": ("hc_pred_mm", "hc_ref_mm", "hc_abs_err_mm")}


def extra_metric_columns(names: Sequence[str]) -> list[str]:
    """The results.csv columns of the extra metrics ``names`` (unknown names: none).

    Args:
        names: keys of ``EXTRA_METRICS``.
    """
    return [column for name in names for column in EXTRA_COLUMNS.get(name, ())]


def extra_metrics(names: Sequence[str]) -> ExtraMetric | None:
    """One function computing the columns of every metric in ``names`` (None for none).

    Args:
        names: keys of ``EXTRA_METRICS``; an unknown one is a ValueError listing the known ones.
    """
    unknown = sorted(set(names) - set(EXTRA_METRICS))
    if unknown:
        raise ValueError(f"dataset.extra_metrics: unknown metric(s) {unknown}; known: {', '.join(EXTRA_METRICS)}")
    if not names:
        return None
    chosen = [EXTRA_METRICS[name] for name in names]
    return lambda sample, prediction: {k: v for metric in chosen for k, v in metric(sample, prediction).items()}
