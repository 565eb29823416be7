"""Intensity windows: CT in Hounsfield units by named presets, other modalities by percentiles."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from salip_bench.datasets.base import window_uint8

# Radiology's usual (level, width) presets, in HU.
CT_PRESETS: dict[str, tuple[float, float]] = {"abdomen": (40, 400), "lung": (-600, 1500), "bone": (400, 1800),
                                              "brain": (40, 80), "mediastinum": (50, 350), "liver": (60, 160)}
CT_DEFAULT = "abdomen"


def is_ct(modality: str | None) -> bool:
    """Whether a modality name (``CT``, ``ct``, ``Computed Tomography``, nnU-Net ``CT``) means CT."""
    text = (modality or "").strip().casefold()
    return text == "ct" or text.startswith("ct ") or "computed tomography" in text


def resolve_window(window: Any, modality: str | None) -> dict:
    """The window a volume is shown through, as ``summary.json`` states it.

    Args:
        window: None (CT: ``abdomen``; else percentiles), a preset name, ``percentile``, or ``[low, high]`` in HU.
        modality: the image's modality (dataset.json channel name, DICOM Modality, dataset.modality).

    Returns:
        {"kind": "hu", "name", "low", "high"} or {"kind": "percentile", "low": 0.5, "high": 99.5}.

    Raises:
        ValueError: an unknown preset or a bad range, in one line.
    """
    percentile = {"kind": "percentile", "low": 0.5, "high": 99.5}
    if window is None:
        window = CT_DEFAULT if is_ct(modality) else "percentile"
    if isinstance(window, str):
        if window == "percentile":
            return percentile
        if window not in CT_PRESETS:
            raise ValueError(f"dataset.window={window!r}: expected one of {sorted(CT_PRESETS)}, percentile, "
                             "or [low, high] in HU")
        level, width = CT_PRESETS[window]
        return {"kind": "hu", "name": window, "low": level - width / 2, "high": level + width / 2}
    if isinstance(window, Sequence) and len(window) == 2:
        low, high = (float(v) for v in window)
        if np.isfinite([low, high]).all() and low < high:
            return {"kind": "hu", "name": f"[{low:g}, {high:g}]", "low": low, "high": high}
    raise ValueError(f"dataset.window={window!r}: expected a preset name or [low, high] with low < high")


def apply_window(array: np.ndarray, window: dict) -> np.ndarray:
    """Intensities → uint8 through ``window`` (:func:`resolve_window`)."""
    if window["kind"] == "percentile":
        return window_uint8(array, window["low"], window["high"])
    low, high = window["low"], window["high"]
    values = np.nan_to_num(np.asarray(array, np.float32), nan=low, posinf=high, neginf=low)
    return np.round(np.clip((values - low) / (high - low), 0, 1) * 255).astype(np.uint8)
