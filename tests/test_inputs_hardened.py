"""Hostile inputs at the dataset level: clashing ids, non-finite intensities, unreadable volumes."""
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
from salip_bench.datasets.base import window_uint8
from salip_bench.evaluation.extra_metrics import head_circumference
from salip_bench.evaluation.records import RecordStore
from salip_bench.registry import DATASETS
from salip_bench.storage.files import safe_name

REPO = Path(__file__).resolve().parents[1]

DATA = SHARED  # $SALIP_BENCH_SHARED_DATA or ../shared/data
CONF = REPO / "conf" / "dataset"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="shared dev data not present")


def build(yaml_name: str, **overrides):
    return DATASETS.build(OmegaConf.merge(OmegaConf.load(CONF / f"{yaml_name}.yaml"), overrides))


def assert_distinct_records(ids: list[str], tmp_path: Path, casefold: bool = True) -> None:
    """Distinct ids, and distinct record files (``casefold``: even on a case-insensitive file
    system; files whose names differ only in case cannot both exist there in the first place)."""
    assert len(set(ids)) == len(ids), ids
    store = RecordStore(tmp_path / "out")
    names = [store.record_path(i).name.casefold() if casefold else store.record_path(i).name for i in ids]
    assert len(set(names)) == len(names), names


def save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG" if path.suffix.lower() == ".png" else None)


def square(value: int = 90) -> tuple[np.ndarray, np.ndarray]:
    image, mask = np.full((20, 30), value, np.uint8), np.zeros((20, 30), np.uint8)
    mask[5:15, 5:12] = 255
    return image, mask


def test_safe_name_is_one_file_per_id():
    tricky = ["col a", "col_a", "col?a", "a/b", "a_b", "..", ".hidden", "_hidden", "ü", "u", "x" * 300, "x" * 301]
    names = [safe_name(i) for i in tricky]
    assert len(set(names)) == len(names)
    assert safe_name("100_HC") == "100_HC" and safe_name("CHNCXR_0001_0.png") == "CHNCXR_0001_0.png"
    assert all("/" not in n and not n.startswith(".") and len(n) < 255 for n in names)


def test_folder_clashing_stems_and_file_names_get_distinct_ids(tmp_path):
    image, mask = square()
    for name in ("dup.png", "dup.jpg", "col a.png", "col_a.png", "solo.png"):
        save_png(tmp_path / "images" / name, image)
    for stem in ("dup", "col a", "col_a", "solo"):
        save_png(tmp_path / "masks" / f"{stem}_mask.png", mask)
    with pytest.raises(ValueError, match=r"paired with both .*dup\.jpg.* and .*dup\.png.*shared_mask=true"):
        build("folder", root=str(tmp_path), prompts="fetal_head").ids  # noqa: B018 - the lazy ids property pairs files and raises
    dataset = build("folder", root=str(tmp_path), prompts="fetal_head", shared_mask=True)
    assert dataset.ids == ["col a", "col_a", "dup.jpg", "dup.png", "solo"]
    assert [dataset[i].id for i in range(len(dataset))] == dataset.ids
    assert all(dataset[i].error is None for i in range(len(dataset)))
    assert_distinct_records(dataset.ids, tmp_path)


def test_cxr_png_and_jpg_of_one_stem_are_two_samples(tmp_path):
    image, mask = square()
    save_png(tmp_path / "CXR_png" / "CHNCXR_0001_0.png", image)
    save_png(tmp_path / "CXR_png" / "CHNCXR_0001_0.jpg", image)
    save_png(tmp_path / "masks" / "CHNCXR_0001_0_mask.png", mask)
    with pytest.raises(ValueError, match="paired with both"):
        build("cxr", root=str(tmp_path)).ids  # noqa: B018 - the lazy ids property pairs files and raises
    dataset = build("cxr", root=str(tmp_path), shared_mask=True)
    assert dataset.ids == ["CHNCXR_0001_0.jpg", "CHNCXR_0001_0.png"]
    assert all(dataset[i].mask.sum() == 70 for i in range(2))
    assert_distinct_records(dataset.ids, tmp_path)


def test_hc18_names_differing_in_case_get_distinct_ids_and_keep_their_csv_row(tmp_path):
    image, outline = np.full((20, 30), 90, np.uint8), np.zeros((20, 30), np.uint8)
    outline[5, 5:12] = outline[14, 5:12] = outline[5:15, 5] = outline[5:15, 11] = 255
    for name in ("007_HC.png", "007_HC.PNG"):
        save_png(tmp_path / "training_set" / name, image)
    save_png(tmp_path / "training_set" / "007_HC_Annotation.png", outline)
    (tmp_path / "training_set_pixel_size_and_HC.csv").write_text(
        "filename,pixel size(mm),head circumference (mm)\n007_HC.png,0.1,5.0\nbroken.png,not-a-number,1\n")
    with pytest.raises(ValueError, match="paired with both"):
        build("hc18", root=str(tmp_path)).ids  # noqa: B018 - the lazy ids property pairs files and raises
    dataset = build("hc18", root=str(tmp_path), shared_mask=True)
    assert dataset.ids == ["007_HC.PNG", "007_HC.png"]
    for index in range(2):
        sample = dataset[index]
        assert sample.error is None and sample.mask.sum() == 70
        assert head_circumference(sample, sample.mask)["hc_ref_mm"] == 5.0
    assert_distinct_records(dataset.ids, tmp_path, casefold=False)


def write_volume(path: Path, data: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))


def brain_volume(shape=(12, 10, 6)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    mask = np.zeros(shape, np.uint8)
    mask[2:9, 2:8, :] = 1
    return (rng.random(shape) * 1000).astype(np.float32), mask


def test_cc359_volume_names_that_sanitise_alike_get_distinct_records(tmp_path):
    image, mask = brain_volume()
    for name in ("col a", "col_a"):
        write_volume(tmp_path / "Original" / f"{name}.nii.gz", image)
        write_volume(tmp_path / "Silver-standard" / f"{name}_ss.nii.gz", mask)
    dataset = build("cc359", root=str(tmp_path))
    assert len(dataset) == 12 and dataset.ids[0] == "col a_slice000" and dataset.ids[6] == "col_a_slice000"
    assert_distinct_records(dataset.ids, tmp_path)


@needs_data
@pytest.mark.parametrize("preset, overrides", [("hc18_demo", {}), ("mni152_demo", {"root": str(DATA / "mri_brain")})])
def test_demo_presets_have_distinct_ids_and_records(preset, overrides, tmp_path):
    cfg = OmegaConf.merge(OmegaConf.load(CONF / f"{preset}.yaml"), overrides)
    cfg.root = str(cfg.root).replace("${package_dir:demo/hc18}", str(REPO / "src" / "salip_bench" / "demo" / "hc18"))
    dataset = DATASETS.build(cfg)
    assert len(dataset) >= 3
    assert_distinct_records(dataset.ids, tmp_path)


def test_window_ignores_non_finite_values():
    clean = np.linspace(0, 1000, 1000, dtype=np.float32).reshape(10, 10, 10)
    dirty = clean.copy()
    dirty[0, 0, 0], dirty[0, 0, 1], dirty[0, 0, 2] = np.nan, np.inf, -np.inf
    windowed = window_uint8(dirty)
    assert windowed[0, 0, 0] == 0 and windowed[0, 0, 1] == 255 and windowed[0, 0, 2] == 0
    # The other voxels keep (almost exactly) the scale they have without the three bad ones.
    assert np.abs(windowed[1:].astype(int) - window_uint8(clean)[1:].astype(int)).max() <= 2
    assert windowed[5:].mean() > 100
    with pytest.raises(ValueError, match="no finite intensity"):
        window_uint8(np.full((4, 4), np.nan, np.float32))


def test_cc359_nan_voxel_is_a_warning_not_a_black_volume(tmp_path):
    image, mask = brain_volume()
    dirty = image.copy()
    dirty[3, 3, 3] = np.nan
    write_volume(tmp_path / "Original" / "clean.nii.gz", image)
    write_volume(tmp_path / "Original" / "dirty.nii.gz", dirty)
    write_volume(tmp_path / "Original" / "void.nii.gz", np.full(image.shape, np.nan, np.float32))
    for name in ("clean", "dirty", "void"):
        write_volume(tmp_path / "Silver-standard" / f"{name}_ss.nii.gz", mask)
    dataset = build("cc359", root=str(tmp_path))
    samples = {s.id: s for s in (dataset[i] for i in range(len(dataset)))}
    dirty_slice, clean_slice = samples["dirty_slice003"], samples["clean_slice003"]
    assert "1 non-finite value" in dirty_slice.meta["warning"] and "warning" not in clean_slice.meta
    assert dirty_slice.image.mean() > 50  # not blacked out
    assert np.abs(dirty_slice.image.astype(int) - clean_slice.image.astype(int)).max() <= 255
    assert np.mean(dirty_slice.image == clean_slice.image) > 0.5
    assert "no finite intensity" in samples["void_slice000"].error


def test_folder_float_tiff_with_nan_gets_a_warning(tmp_path):
    image = np.linspace(0, 1, 600, dtype=np.float32).reshape(20, 30)
    image[0, 0] = np.nan
    (tmp_path / "images").mkdir()
    Image.fromarray(image, mode="F").save(tmp_path / "images" / "float.tif")
    save_png(tmp_path / "masks" / "float_mask.png", square()[1])
    sample = build("folder", root=str(tmp_path), prompts="brain")[0]
    assert sample.error is None and "non-finite" in sample.meta["warning"]
    assert sample.image.max() == 255 and sample.image[0, 0, 0] == 0


def test_cc359_corrupt_header_is_one_failed_sample_among_good_volumes(tmp_path):
    image, mask = brain_volume()
    for name in ("a_good", "c_good"):
        write_volume(tmp_path / "Original" / f"{name}.nii.gz", image)
        write_volume(tmp_path / "Silver-standard" / f"{name}_ss.nii.gz", mask)
    (tmp_path / "Original" / "b_corrupt.nii.gz").write_bytes(os.urandom(4096))
    shutil.copy(tmp_path / "Silver-standard" / "a_good_ss.nii.gz", tmp_path / "Silver-standard" / "b_corrupt_ss.nii.gz")
    dataset = build("cc359", root=str(tmp_path), skip_empty=True)
    assert len(dataset) == 13 and dataset.ids[6] == "b_corrupt_unreadable"
    failed = dataset[6]
    assert failed.image is None and "unreadable volume" in failed.error and "b_corrupt.nii.gz" in failed.error
    assert failed.meta["volume"] == "b_corrupt"
    assert all(dataset[i].error is None for i in range(len(dataset)) if i != 6)
    # A volume that fails only when its voxels are read keeps its grouping keys in each failed slice.
    (tmp_path / "Silver-standard" / "c_good_ss.nii.gz").write_bytes(b"\x1f\x8b truncated")
    truncated = build("cc359", root=str(tmp_path))[7]
    assert truncated.error and truncated.meta == {**truncated.meta, "volume": "c_good", "slice": 0}


def test_top_k_below_one_is_refused_per_class():
    from salip_bench.datasets.settings import DatasetSettings

    for bad in (0, -1, {"lung": 0}):
        with pytest.raises(ValueError, match="expected an integer >= 1"):
            DatasetSettings(prompts="lungs", top_k=bad).top_k_per_class()
