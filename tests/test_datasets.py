"""The cxr, hc18 and cc359 datasets on the shared dev data (../shared/data) and on tiny synthetic layouts."""
from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from conftest import SHARED
from salip_bench.datasets.cc359 import display_slice, scanner_domain, slice_bounds
from salip_bench.datasets.settings import DatasetSettings
from salip_bench.evaluation.aggregate import aggregate_records
from salip_bench.evaluation.extra_metrics import head_circumference
from salip_bench.masks import gt_boxes
from salip_bench.metrics import confusion_counts, dice_iou_from_counts
from salip_bench.registry import DATASETS

REPO = Path(__file__).resolve().parents[1]

DATA = SHARED  # $SALIP_BENCH_SHARED_DATA or ../shared/data
CONF = REPO / "conf" / "dataset"
MRI_OVERRIDES = {"root": str(DATA / "mri_brain"), "image_dir": ".", "mask_dir": ".",
                 "image_pattern": "*_T1w.nii.gz", "mask_pattern": "{id}_brainmask.nii.gz"}
# Overrides that point each yaml at its shared dev set.
SHARED_OVERRIDES = {
    "cxr": {"root": str(DATA / "cxr_lung"), "image_dir": "images"},
    "hc18": {"root": str(DATA / "us_fetal_head"), "image_dir": "images", "annotation_dir": "annotations"},
    "cc359": MRI_OVERRIDES,
    "mni152_demo": {"root": str(DATA / "mri_brain")},
}
MRI_BRAIN_VOXELS = 230_388  # from the mri_brain README

needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="shared dev data not present")


def build(yaml_name: str, **overrides):
    cfg = OmegaConf.load(CONF / f"{yaml_name}.yaml")
    return DATASETS.build(OmegaConf.merge(cfg, {**SHARED_OVERRIDES.get(yaml_name, {}), **overrides}))


def settings(yaml_name: str) -> DatasetSettings:
    """The run settings a dataset yaml declares (prompts, top_k, max_side, extra_metrics)."""
    return DatasetSettings.from_config(OmegaConf.to_container(OmegaConf.load(CONF / f"{yaml_name}.yaml")))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def record(sample, prediction: np.ndarray) -> dict:
    counts = confusion_counts(prediction, sample.mask)
    score, iou = dice_iou_from_counts(**counts)
    return {"id": sample.id, "status": "ok", "dice": score, "iou": iou, **counts,
            **{k: sample.meta[k] for k in ("volume", "domain", "slice")}}


@needs_data
@pytest.mark.parametrize("yaml_name", sorted(SHARED_OVERRIDES))
def test_yaml_builds_on_shared_data(yaml_name):
    dataset = build(yaml_name)
    sample = dataset[0]
    assert sample.error is None
    assert sample.image.dtype == np.uint8 and sample.image.ndim == 3 and sample.image.shape[2] == 3
    assert sample.mask.dtype == bool and sample.mask.shape == sample.image.shape[:2]
    declared = settings(yaml_name)
    assert declared.class_prompts() and set(declared.top_k_per_class()) == set(declared.class_prompts())
    assert not hasattr(dataset, "prompts") and not hasattr(dataset, "top_k")  # the run's settings, not the data's


def test_gt_boxes_one_box_per_component_largest_first():
    mask = np.zeros((50, 60), bool)
    mask[5:10, 2:6] = True  # 20 px
    mask[20:40, 30:55] = True  # 500 px
    mask[45, 45] = True  # a speck below min_area
    boxes = gt_boxes(mask, min_area=16)
    np.testing.assert_array_equal(boxes, [[30, 20, 54, 39], [2, 5, 5, 9]])
    assert boxes.dtype == np.float32
    assert gt_boxes(mask, min_area=1).shape == (3, 4)
    assert gt_boxes(np.zeros((8, 8), bool)).shape == (0, 4)


@needs_data
def test_cxr_dev_set_two_lungs_per_image():
    dataset = build("cxr")
    assert len(dataset) == 8 and settings("cxr").top_k == 2 and settings("cxr").prompts == "lungs"
    for index in range(len(dataset)):
        sample = dataset[index]
        assert sample.error is None, sample.error
        assert len(gt_boxes(sample.mask)) == 2


def test_cxr_kaggle_layout_both_mask_names(tmp_path):
    (tmp_path / "CXR_png").mkdir()
    (tmp_path / "masks").mkdir()
    image, mask = np.full((20, 30), 90, np.uint8), np.zeros((20, 30), np.uint8)
    mask[5:15, 5:12] = 255
    for stem in ("CHNCXR_0001_0", "MCUCXR_0001_0", "MCUCXR_0002_0"):
        Image.fromarray(image).save(tmp_path / "CXR_png" / f"{stem}.png")
    Image.fromarray(mask).save(tmp_path / "masks" / "CHNCXR_0001_0_mask.png")
    Image.fromarray(mask).save(tmp_path / "masks" / "MCUCXR_0001_0.png")  # Montgomery: same name as the image
    dataset = build("cxr", root=str(tmp_path), image_dir="CXR_png")
    assert dataset.ids == ["CHNCXR_0001_0", "MCUCXR_0001_0"]
    assert all(dataset[i].mask.sum() == 70 for i in range(2))
    everything = build("cxr", root=str(tmp_path), image_dir="CXR_png", skip_unmasked=False)
    assert len(everything) == 3 and "MCUCXR_0002_0_mask.png" in everything[2].error


@needs_data
def test_hc18_filled_outlines_match_dev_masks_and_circumference():
    dataset = build("hc18")
    assert len(dataset) == 12 and dataset.pixel_size_csv is not None
    assert settings("hc18").extra_metrics == ("head_circumference",)  # chosen by the yaml, computed by evaluation
    for index in range(len(dataset)):
        sample = dataset[index]
        assert sample.error is None, sample.error
        reference = np.asarray(Image.open(DATA / "us_fetal_head" / "masks" / f"{sample.id}_mask.png")) > 127
        assert dice(sample.mask, reference) >= 0.99
        columns = head_circumference(sample, sample.mask)
        assert columns["hc_abs_err_mm"] <= 0.03 * columns["hc_ref_mm"], (sample.id, columns)
    empty = head_circumference(sample, np.zeros_like(sample.mask))
    assert empty["hc_pred_mm"] is None and empty["hc_abs_err_mm"] is None and empty["hc_ref_mm"] > 0


@needs_data
def test_hc18_original_layout_one_folder(tmp_path):
    source = DATA / "us_fetal_head"
    (tmp_path / "training_set").mkdir()
    for stem in ("100_HC", "208_HC"):
        shutil.copy(source / "images" / f"{stem}.png", tmp_path / "training_set")
        shutil.copy(source / "annotations" / f"{stem}_Annotation.png", tmp_path / "training_set")
    shutil.copy(source / "pixel_size_and_HC.csv", tmp_path / "training_set_pixel_size_and_HC.csv")
    dataset = DATASETS.build({**OmegaConf.to_container(OmegaConf.load(CONF / "hc18.yaml")), "root": str(tmp_path)})
    assert dataset.ids == ["100_HC", "208_HC"]
    assert dataset[0].error is None and dataset.pixel_sizes["208_HC"][1] == pytest.approx(171.21)


@pytest.mark.parametrize("name, domain", [("CC0001_philips_15_55_M", "philips_15"), ("CC0120_ge_3_56_F", "ge_3"),
                                          ("CC0300_siemens_15_58_F", "siemens_15"), ("cc0200_GE_15_60_M", "ge_15"),
                                          ("CC0340_siemens_3_61_M", "siemens_3"), ("mni152_2mm", "unknown")])
def test_scanner_domain(name, domain):
    assert scanner_domain(name) == domain


def test_slice_bounds_indices_and_fractions():
    assert slice_bounds(None, 10) == range(10)
    assert slice_bounds([2, 5], 10) == range(2, 5)
    assert slice_bounds([0.1, 0.9], 10) == range(1, 9)
    assert slice_bounds([1, -1], 10) == range(1, 9)


@needs_data
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_cc359_on_mni152_slices_and_3d_dice(axis):
    dataset = build("mni152_demo", axis=axis)
    truth = nib.as_closest_canonical(nib.load(str(DATA / "mri_brain" / "mni152_2mm_brainmask.nii.gz")))
    truth = np.asanyarray(truth.dataobj) > 0
    other = [n for a, n in enumerate(truth.shape) if a != axis]
    assert len(dataset) == truth.shape[axis]
    # A synthetic prediction: the GT shifted by 3 voxels and cut by a plane, scored slice by slice.
    prediction = np.roll(truth, 3, axis=(axis + 1) % 3)
    prediction[..., : truth.shape[2] // 3] = False
    records, stacked = [], []
    for index in range(len(dataset)):
        sample = dataset[index]
        assert sample.error is None, sample.error
        assert sample.image.shape == (other[1], other[0], 3) and sample.image.dtype == np.uint8
        assert sample.meta["slice"] == index and sample.meta["volume"] == "mni152_2mm"
        stacked.append(sample.mask)
        records.append(record(sample, display_slice(prediction, axis, index)))
    np.testing.assert_array_equal(np.stack([display_slice(truth, axis, i) for i in range(len(dataset))]),
                                  np.stack(stacked))
    assert np.count_nonzero(np.stack(stacked)) == MRI_BRAIN_VOXELS
    summary = aggregate_records(records).aggregates_dict()
    assert summary["per_volume"]["mni152_2mm"]["dice_3d"] == pytest.approx(dice(prediction, truth), abs=1e-9)
    assert summary["per_domain"]["unknown"]["n_volumes"] == 1


@needs_data
def test_cc359_slice_range_and_skip_empty():
    full = build("cc359")
    assert full.axis == 2 and len(full) == 91
    assert len(build("cc359", slice_range=[10, 20])) == 10
    assert [s for _, s in build("cc359", slice_range=[0.5, 1.0]).index] == list(range(46, 91))
    nonempty = build("cc359", skip_empty=True)
    assert 0 < len(nonempty) < 91 and all(nonempty[i].mask.any() for i in (0, len(nonempty) - 1))


def write_volume(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))


def test_cc359_layout_domains_orientation_and_cache(tmp_path):
    rng = np.random.default_rng(0)
    brain = np.zeros((12, 10, 8), np.uint8)
    brain[1:5, 2:8, 2:6] = 1
    ras, las = np.eye(4), np.diag([-1.0, 1.0, 1.0, 1.0])
    # The same head stored right-to-left (x reversed, LAS affine): reoriented it must match the RAS one.
    for name, affine, flip in (("CC0001_philips_15_55_M", ras, 1), ("CC0002_ge_3_56_F", las, -1)):
        image = (rng.random(brain.shape) * 1000).astype(np.int16)
        write_volume(tmp_path / "Original" / f"{name}.nii.gz", image[::flip], affine)
        write_volume(tmp_path / "Silver-standard" / f"{name}_ss.nii.gz", brain[::flip], affine)
    dataset = DATASETS.build({**OmegaConf.to_container(OmegaConf.load(CONF / "cc359.yaml")),
                              "root": str(tmp_path), "cache_volumes": 1})
    assert len(dataset) == 16 and dataset.ids[0] == "CC0001_philips_15_55_M_slice000"
    samples = [dataset[i] for i in range(len(dataset))]
    assert all(s.error is None and s.image.shape == (10, 12, 3) for s in samples)
    assert [s.meta["domain"] for s in samples] == ["philips_15"] * 8 + ["ge_3"] * 8
    assert len(dataset._cache) == 1
    np.testing.assert_array_equal(samples[3].mask, samples[11].mask)
    assert samples[3].mask[:, :5].any() and not samples[3].mask[:, 5:].any()
    summary = aggregate_records([record(s, s.mask) for s in samples]).aggregates_dict()
    assert set(summary["per_domain"]) == {"philips_15", "ge_3"} and summary["dice_3d_mean"] == 1.0


def test_top_k_mapping_missing_a_class_is_a_clear_error():
    both = {"lung": 2, "left lung": 1, "right lung": 1}  # one mapping for two prompt sets (tab2) is fine
    assert DatasetSettings(prompts="lungs", top_k=both).top_k_per_class() == {"lung": 2}
    with pytest.raises(ValueError, match=r"no k for class\(es\) \['right lung'\]"):
        DatasetSettings(prompts="lungs_left_right", top_k={"left lung": 1}).top_k_per_class()
