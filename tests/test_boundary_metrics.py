"""NSD / HD95 through MONAI with physical spacing, the empty-mask rules, and their aggregation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.metrics import compute_hausdorff_distance, compute_surface_dice

from salip_bench.evaluation.aggregate import aggregate_records
from salip_bench.evaluation.records import results_frame
from salip_bench.metrics import BOUNDARY_CONVENTIONS, boundary_metrics


def disc(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius ** 2


def test_matches_a_direct_monai_call_with_anisotropic_spacing():
    target = disc((60, 80), (30, 40), 18)
    prediction = disc((60, 80), (33, 44), 15)
    spacing = [0.7, 1.3]
    got = boundary_metrics(prediction, target, spacing, tolerance=2.0)
    as_tensor = [torch.from_numpy(m)[None, None].float() for m in (prediction, target)]
    nsd = compute_surface_dice(*as_tensor, [2.0], include_background=True, spacing=spacing).item()
    hd95 = compute_hausdorff_distance(*as_tensor, include_background=True, percentile=95, spacing=spacing).item()
    assert got == {"nsd": pytest.approx(nsd), "hd95": pytest.approx(hd95)}
    assert 0.0 < got["nsd"] < 1.0 and got["hd95"] > 0


def test_distances_scale_with_the_pixel_size_and_tolerance_is_in_those_units():
    target = disc((50, 50), (25, 25), 12)
    prediction = disc((50, 50), (25, 29), 12)  # shifted 4 pixels
    in_pixels = boundary_metrics(prediction, target, None, tolerance=2.0)
    in_mm = boundary_metrics(prediction, target, [0.5, 0.5], tolerance=1.0)  # 2 px = 1 mm
    assert in_mm["hd95"] == pytest.approx(in_pixels["hd95"] * 0.5)
    assert in_mm["nsd"] == pytest.approx(in_pixels["nsd"])
    assert boundary_metrics(prediction, target, None, tolerance=10.0)["nsd"] == 1.0  # all within 10 px


def test_three_dimensional_masks_with_voxel_sizes():
    target = np.zeros((20, 20, 10), bool)
    target[5:15, 5:15, 2:8] = True
    prediction = np.roll(target, 1, axis=2)  # one slice off along an axis of 3 mm voxels
    got = boundary_metrics(prediction, target, [1.0, 1.0, 3.0], tolerance=2.0)
    assert got["hd95"] == pytest.approx(3.0)
    assert got["nsd"] < 1.0


@pytest.mark.parametrize("pred_empty,gt_empty,expected", [(True, True, {"nsd": 1.0, "hd95": 0.0}),
                                                          (True, False, {"nsd": 0.0, "hd95": None}),
                                                          (False, True, {"nsd": 0.0, "hd95": None})])
def test_empty_mask_rules(pred_empty, gt_empty, expected):
    full = disc((30, 30), (15, 15), 8)
    empty = np.zeros_like(full)
    assert boundary_metrics(empty if pred_empty else full, empty if gt_empty else full, [1.0, 1.0]) == expected
    assert set(BOUNDARY_CONVENTIONS) == {"nsd", "hd95"}


def test_undefined_and_unlabelled_samples_are_counted_not_dropped():
    records = [{"id": "a", "status": "ok", "dice": 0.8, "iou": 0.67, "nsd": 0.9, "hd95": 3.0, "gt_area": 10},
               {"id": "b", "status": "ok", "dice": 0.0, "iou": 0.0, "nsd": 0.0, "hd95": None, "gt_area": 0},
               {"id": "c", "status": "ok", "gt_area": None, "pred_area": 5},
               {"id": "d", "status": "failed", "failure": "ValueError: x"}]
    summary = aggregate_records(records).aggregates_dict()
    assert summary["n_total"] == 4 and summary["n_ok"] == 3 and summary["n_failed"] == 1
    assert summary["n_unlabelled"] == 1
    assert summary["hd95_n_undefined"] == 1 and summary["hd95_mean"] == pytest.approx(3.0)
    assert summary["nsd_n_undefined"] == 0 and summary["nsd_mean"] == pytest.approx(0.45)
    assert summary["dice_mean"] == pytest.approx(0.4)  # the unlabelled sample is not a zero
    frame = results_frame(records)
    assert {"dice", "iou", "nsd", "hd95"} <= set(frame.columns)
    assert frame.set_index("id").loc["c", ["dice", "nsd", "hd95"]].isna().all()
