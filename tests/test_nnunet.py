"""dataset=nnunet (nnU-Net v2 raw and MSD layouts), volumes with label maps, DICOM series, geometry checks
and CT windows: on the shared ct_abdomen / ct_dicom sets and on tiny synthetic layouts, bad inputs included."""
from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from conftest import SHARED
from salip_bench.datasets.nnunet import NnunetDataset
from salip_bench.datasets.volume_io import read_volume, to_ras
from salip_bench.datasets.volumes import VolumesDataset
from salip_bench.datasets.windows import resolve_window
from salip_bench.evaluation.label_volumes import write_label_volumes
from salip_bench.storage.files import safe_name

CT_ABDOMEN, CT_DICOM = SHARED / "ct_abdomen", SHARED / "ct_dicom"
needs_data = pytest.mark.skipif(not CT_ABDOMEN.is_dir(), reason="shared dev data not present")
FIVE = ["liver", "spleen", "kidney_left", "kidney_right", "stomach"]


def nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def phantom(shape=(12, 10, 6)) -> tuple[np.ndarray, np.ndarray]:
    image = np.random.default_rng(0).normal(40, 20, shape).astype(np.int16)
    labels = np.zeros(shape, np.uint8)
    labels[2:6, 2:5, 1:4], labels[7:10, 5:9, 2:5], labels[7:9, 1:3, 0:2] = 1, 2, 3
    return image, labels


def nnunet_layout(root: Path, labels=None, ending=".nii.gz", channels=None) -> Path:
    image, label = phantom()
    for case in ("c1", "c2"):
        for c in range(len(channels or {"0": "CT"})):
            nifti(root / "imagesTr" / f"{case}_{c:04d}.nii.gz", image + 100 * c)
        nifti(root / "labelsTr" / f"{case}.nii.gz", label)
    nifti(root / "imagesTs" / "c3_0000.nii.gz", image)
    info = {"channel_names": channels or {"0": "CT"}, "file_ending": ending, "numTraining": 2,
            "labels": labels or {"background": 0, "liver": 1, "kidney_left": 2, "kidney_right": 3}}
    (root / "dataset.json").write_text(json.dumps(info))
    return root


@needs_data
def test_ct_abdomen_five_organs_give_150_samples_with_organ_masks_and_ct_window():
    dataset = NnunetDataset(str(CT_ABDOMEN), organs=FIVE)
    assert len(dataset) == 150 and dataset.ids[:2] == ["tsct_001_slice000_liver", "tsct_001_slice000_spleen"]
    samples = [dataset[i] for i in range(len(dataset))]
    assert all(s.error is None and s.meta["spacing"] == [3.0, 3.0] for s in samples)
    voxels = {o: sum(int(s.mask.sum()) for s in samples if s.meta["organ"] == o) for o in FIVE}
    assert voxels == {"liver": 38634, "spleen": 9452, "kidney_left": 3676, "kidney_right": 3947, "stomach": 4675}
    assert dataset.windows["tsct_001"] == {"kind": "hu", "name": "abdomen", "low": -160.0, "high": 240.0}


@needs_data
def test_ct_abdomen_label_map_without_organs_fails_each_slice_naming_the_cure():
    dataset = NnunetDataset(str(CT_ABDOMEN), slice_range=[10, 11])
    assert "label map" in dataset[0].error and "dataset.organs" in dataset[0].error


@needs_data
def test_label_volumes_on_the_input_affine_hold_only_the_chosen_organs(tmp_path):
    dataset = NnunetDataset(str(CT_ABDOMEN), organs=["liver", {"kidney": ["kidney_left", "kidney_right"]}])
    (tmp_path / "masks").mkdir()
    from PIL import Image
    records = []
    for i in range(len(dataset)):
        sample = dataset[i]  # a perfect prediction: the reference itself
        Image.fromarray(sample.mask.astype(np.uint8) * 255).save(tmp_path / "masks" / f"{safe_name(sample.id)}.png")
        records.append({"id": sample.id, "status": "ok", **sample.meta})
    result = write_label_volumes(dataset, tmp_path, records)
    assert set(result) == {"tsct_001/liver", "tsct_001/kidney"}
    assert result["tsct_001/liver"]["nsd_3d"] == 1.0 and result["tsct_001/kidney"]["hd95_3d"] == 0.0
    written = nib.load(result["tsct_001/liver"]["path"])
    source = nib.load(str(CT_ABDOMEN / "imagesTr" / "tsct_001_0000.nii.gz"))
    reference = np.asanyarray(nib.load(str(CT_ABDOMEN / "labelsTr" / "tsct_001.nii.gz")).dataobj)
    assert np.array_equal(written.affine, source.affine) and written.shape == source.shape
    data = np.asanyarray(written.dataobj)
    assert set(np.unique(data)) == {0, 2, 5}
    assert np.array_equal(data == 5, reference == 5) and np.array_equal(data == 2, np.isin(reference, [2, 3]))
    table = json.loads((tmp_path / "volumes" / "tsct_001.labels.json").read_text())
    assert table == {"5": "liver", "2": "kidney"}


def test_nnunet_v2_layout_regions_split_and_channels(tmp_path):
    root = nnunet_layout(tmp_path / "d", labels={"background": 0, "liver": 1, "kidney": [2, 3]})
    dataset = NnunetDataset(str(root), organs="all")
    assert dataset.organ_names == ["liver", "kidney"] and len(dataset) == 2 * 6 * 2
    kidney = dataset[dataset.ids.index("c1_slice002_kidney")]
    _, labels = phantom()
    assert kidney.mask.sum() == np.isin(labels[:, :, 2], [2, 3]).sum()
    test = NnunetDataset(str(root), split="test")
    assert not test.labelled and test.ids[0] == "c3_slice000" and test[0].mask is None
    two = nnunet_layout(tmp_path / "two", channels={"0": "T1", "1": "T2"})
    with pytest.raises(ValueError, match="2 channels.*dataset.channel"):
        NnunetDataset(str(two), organs=["liver"])
    t2 = NnunetDataset(str(two), organs=["liver"], channel="T2")
    assert t2.cases["c1"][0].name == "c1_0001.nii.gz"
    assert t2.windows == {} or True  # read lazily; MRI keeps the percentile window
    t2[0]
    assert t2.windows["c1"]["kind"] == "percentile"


def test_msd_layout_with_4d_images_and_channel(tmp_path):
    image, labels = phantom()
    four_d = np.stack([image, image * 0 + 7], axis=-1)
    nifti(tmp_path / "imagesTr" / "BRATS_001.nii.gz", four_d)
    nifti(tmp_path / "labelsTr" / "BRATS_001.nii.gz", labels)
    nifti(tmp_path / "imagesTs" / "BRATS_002.nii.gz", four_d)
    info = {"modality": {"0": "FLAIR", "1": "T1w"},
            "labels": {"0": "background", "1": "edema", "2": "tumour", "3": "x"},
            "training": [{"image": "./imagesTr/BRATS_001.nii.gz", "label": "./labelsTr/BRATS_001.nii.gz"}],
            "test": ["./imagesTs/BRATS_002.nii.gz"]}
    (tmp_path / "dataset.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="dataset.channel"):
        NnunetDataset(str(tmp_path), organs=["edema"])
    dataset = NnunetDataset(str(tmp_path), organs=["edema"], channel=1)
    sample = dataset[0]
    assert sample.error is None and (sample.image == sample.image.flat[0]).all()  # channel 1 is constant
    assert NnunetDataset(str(tmp_path), split="test", channel="FLAIR").ids[0] == "BRATS_002_slice000"
    info["modality"] = {"0": "FLAIR"}  # says one channel, the file holds two: the case fails in one line
    (tmp_path / "dataset.json").write_text(json.dumps(info))
    failed = NnunetDataset(str(tmp_path), organs=["edema"])
    assert "2 channels (a 4D image): choose one with dataset.channel" in failed[0].error


@pytest.mark.parametrize("content, match", [
    (None, "dataset.json does not exist"), ("{not json", "not valid JSON"), ('{"name": "x"}', "no 'labels' entry"),
    ('{"labels": {"liver": "five"}}', "expected an integer")])
def test_bad_dataset_json_is_one_line(tmp_path, content, match):
    if content is not None:
        (tmp_path / "dataset.json").write_text(content)
    with pytest.raises(ValueError, match=match):
        NnunetDataset(str(tmp_path))


def test_missing_label_file_unnamed_value_and_unknown_organ(tmp_path):
    root = nnunet_layout(tmp_path, labels={"background": 0, "liver": 1, "kidney_left": 2})  # value 3 unnamed
    (root / "labelsTr" / "c2.nii.gz").unlink()
    dataset = NnunetDataset(str(root), organs=["liver"])
    assert "unnamed" not in dataset.ids[0]
    first = dataset[0]
    assert first.error is None and "value(s) [3] that the label table does not name" in first.meta["warning"]
    assert dataset.ids[-1] == "c2_slice005_liver" and "no label file" in dataset[len(dataset) - 1].error
    with pytest.raises(ValueError, match=r"no organ 'kidney_rigth' in dataset.json \(closest: kidney_left"):
        NnunetDataset(str(root), organs=["kidney_rigth"])


def test_label_map_in_another_voxel_order_gives_the_same_masks(tmp_path):
    image, labels = phantom()
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    nifti(tmp_path / "a" / "v.nii.gz", image, affine)
    nifti(tmp_path / "a" / "v_mask.nii.gz", labels, affine)
    # The same labels stored x-reversed and z-reversed, with the affine that says so.
    flipped = labels[::-1, :, ::-1]
    flip_affine = affine.copy()
    flip_affine[0, 0], flip_affine[2, 2] = -2.0, -3.0
    flip_affine[:3, 3] = [2.0 * (labels.shape[0] - 1), 0, 3.0 * (labels.shape[2] - 1)]
    nifti(tmp_path / "b" / "v.nii.gz", image, affine)
    nifti(tmp_path / "b" / "v_mask.nii.gz", flipped, flip_affine)
    same = VolumesDataset(str(tmp_path / "a"), organs="all", labels=str(table(tmp_path)))
    other = VolumesDataset(str(tmp_path / "b"), organs="all", labels=str(table(tmp_path)))
    assert same.ids == other.ids
    for i in range(len(same)):
        assert np.array_equal(same[i].mask, other[i].mask)
    assert not np.array_equal(labels, flipped)


def table(tmp_path: Path) -> Path:
    path = tmp_path / "labels.json"
    path.write_text(json.dumps({"1": "liver", "2": "kidney_left", "3": "kidney_right"}))
    return path


def test_label_map_on_another_grid_is_resampled_or_fails_naming_both_geometries(tmp_path):
    image, labels = phantom()
    nifti(tmp_path / "v.nii.gz", image, np.diag([2.0, 2.0, 2.0, 1.0]))
    # Twice as fine, covering the image: resampled nearest-neighbour onto the image's grid.
    fine = labels.repeat(2, 0).repeat(2, 1).repeat(2, 2)
    fine_affine = np.diag([1.0, 1.0, 1.0, 1.0])
    fine_affine[:3, 3] = -0.5
    nifti(tmp_path / "v_mask.nii.gz", fine, fine_affine)
    dataset = VolumesDataset(str(tmp_path), organs="all", labels=str(table(tmp_path)))
    got = np.stack([dataset[i].mask for i in range(len(dataset)) if dataset[i].meta["organ"] == "liver"])
    assert got.sum() == (labels == 1).sum()
    # Same shape, shifted far away: it does not cover the image, every sample of the case fails.
    shifted = np.diag([2.0, 2.0, 2.0, 1.0])
    shifted[:3, 3] = [100, 0, 0]
    nifti(tmp_path / "v_mask.nii.gz", labels, shifted)
    failed = VolumesDataset(str(tmp_path), organs="all", labels=str(table(tmp_path)))
    error = failed[0].error
    assert failed.ids[0] == "v_slice000_liver"  # every slice of the case fails, naming both geometries
    assert "does not cover its image" in error and "origin (-100.0" in error and "origin (0.0, 0.0, 0.0)" in error


@pytest.mark.parametrize("zoom", [0.0, np.nan, -2.0])
def test_bad_spacing_in_the_header_fails_the_case(tmp_path, zoom):
    image, labels = phantom()
    nifti(tmp_path / "v.nii", image)
    raw = bytearray((tmp_path / "v.nii").read_bytes())
    raw[76 + 8: 76 + 12] = struct.pack("<f", zoom)  # pixdim[2], which nibabel and ITK would "repair" on save/read
    (tmp_path / "v.nii").write_bytes(bytes(raw))
    nifti(tmp_path / "v_mask.nii.gz", (labels > 0).astype(np.uint8))
    dataset = VolumesDataset(str(tmp_path), image_pattern="*.nii")
    if zoom < 0:  # ITK reads a negative pixdim as a flip of spacing 2: a grid the 1 mm mask does not cover
        assert "does not cover its image" in dataset[0].error and "spacing (1.0, 2.0, 1.0)" in dataset[0].error
        return
    assert all("must be finite and > 0" in dataset[i].error for i in range(len(dataset)))


@needs_data
def test_ct_dicom_series_is_ordered_rescaled_and_the_label_map_lands_on_the_liver():
    dataset = VolumesDataset(str(CT_DICOM), image_pattern="series", mask_pattern="labels.nii.gz",
                             labels=str(CT_DICOM / "labels.json"), organs=["liver", "spleen"])
    assert len(dataset) == 40 and dataset.errors == {}
    entry = dataset.volume("series")
    hu = to_ras(read_volume(CT_DICOM / "series").image)
    assert hu[entry["labels"] == 5].mean() == pytest.approx(89, abs=1.5)
    assert hu[entry["labels"] == 1].mean() == pytest.approx(80, abs=1.5)
    assert entry["window"]["name"] == "abdomen"  # DICOM Modality CT
    assert dataset[0].meta["spacing"] == pytest.approx([0.9765625, 0.9765625])


def dicom_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "series"
    shutil.copytree(CT_DICOM / "series", folder)
    return folder


@needs_data
def test_dicom_two_series_a_missing_slice_or_a_non_image_object_fail_in_one_line(tmp_path):
    folder = dicom_copy(tmp_path / "two")
    for path in sorted(folder.iterdir())[:10]:
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = "1.2.826.0.1.3680043.2.1125.1"
        ds.save_as(path)
    with pytest.raises(ValueError, match="holds 2 series"):
        read_volume(folder)
    folder = dicom_copy(tmp_path / "gap")
    by_z = sorted(folder.iterdir(),
                  key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))
    by_z[7].unlink()
    with pytest.raises(ValueError, match="not evenly spaced"):
        read_volume(folder)
    folder = dicom_copy(tmp_path / "sr")
    ds = pydicom.dcmread(next(folder.iterdir()))
    del ds.PixelData
    ds.Modality, ds.SOPClassUID = "SR", "1.2.840.10008.5.1.4.1.1.88.11"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.2.1125.2"
    ds.save_as(folder / "report.dcm")
    with pytest.raises(ValueError, match="series|not images"):
        read_volume(folder)
    # Through the dataset: the case is one recorded failure naming the reason, not a crash.
    dataset = VolumesDataset(str(tmp_path / "gap"), image_pattern="series", mask_dir=None)
    assert "not evenly spaced" in dataset[0].error


def test_ct_windows_presets_ranges_and_errors():
    assert resolve_window(None, "CT")["name"] == "abdomen"
    assert resolve_window(None, "MRI")["kind"] == "percentile"
    assert resolve_window("lung", "CT") == {"kind": "hu", "name": "lung", "low": -1350.0, "high": 150.0}
    assert resolve_window([-100, 300], None)["low"] == -100.0
    for bad in ("abdomn", [300, -100], [1, 2, 3]):
        with pytest.raises(ValueError, match="dataset.window"):
            resolve_window(bad, "CT")


def test_two_cases_sharing_one_label_file_is_an_error_unless_shared(tmp_path):
    image, labels = phantom()
    for case in ("a", "b"):
        nifti(tmp_path / f"{case}.nii.gz", image)
    nifti(tmp_path / "labels" / "mask.nii.gz", (labels > 0).astype(np.uint8))
    with pytest.raises(ValueError, match="paired with both a and b"):
        VolumesDataset(str(tmp_path), mask_dir="labels", mask_pattern="mask.nii.gz")
    shared = VolumesDataset(str(tmp_path), mask_dir="labels", mask_pattern="mask.nii.gz", shared_mask=True)
    assert shared[0].error is None


def test_dicom_like_geometry_written_back_matches(tmp_path):
    image, _ = phantom()
    nifti(tmp_path / "v.nii.gz", image, np.diag([-2.0, 2.0, 3.0, 1.0]))
    volume = read_volume(tmp_path / "v.nii.gz").image
    from salip_bench.datasets.volume_io import from_ras
    back = from_ras(to_ras(volume), volume)
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(volume))


@needs_data
def test_multi_organ_run_rows_summary_volumes_and_one_model_pass_per_slice(tmp_path):
    import pandas as pd

    from conftest import SMOKE, compose_config
    from salip_bench.evaluation.harness import run
    out = tmp_path / "run"
    organs = "[liver,spleen,vertebrae_L1]"  # vertebrae_L1 has no library sentences: templates, said so
    summary = run(compose_config(SMOKE + ["dataset=nnunet", f"dataset.root={CT_ABDOMEN}", f"dataset.organs={organs}",
                                          "dataset.slice_range=[12,14]", f"output_dir={out}"]), out)
    frame = pd.read_csv(out / "results.csv")
    assert len(frame) == 6 and frame["status"].eq("ok").all() and frame["dice"].notna().all()
    assert frame["organ"].tolist() == ["liver", "spleen", "vertebrae_L1"] * 2
    # The slice's SAM passes and CLIP embeddings are paid by its first organ only.
    later = frame[frame["organ"] != "liver"]
    assert later["sam_encoder_passes"].eq(0).all() and later["clip_images_encoded"].eq(0).all()
    assert frame.loc[frame["organ"] == "liver", "clip_images_encoded"].gt(0).all()
    assert set(summary["per_organ"]) == {"liver", "spleen", "vertebrae_L1"}
    assert summary["per_organ"]["liver"]["n_total"] == 2 and "dice_3d_mean" in summary["per_organ"]["liver"]
    assert summary["prompt_source"] == {"liver": "library", "spleen": "library", "vertebrae_L1": "template"}
    assert summary["window"]["name"] == "abdomen" and summary["uses_labels"] is False
    assert set(summary["per_volume"]) == {"tsct_001/liver", "tsct_001/spleen", "tsct_001/vertebrae_L1"}
    written = np.asanyarray(nib.load(str(out / "volumes" / "tsct_001.nii.gz")).dataobj)
    assert set(np.unique(written)) <= {0, 5, 1, 31}
    assert json.loads((out / "volumes" / "tsct_001.labels.json").read_text()) == {"5": "liver", "1": "spleen",
                                                                                   "31": "vertebrae_L1"}
    from salip_bench.reporting.write import write_report
    write_report([out], tmp_path / "report")
    table = (tmp_path / "report" / "table.md").read_text()
    assert all(f"organ: {o}" in table for o in ("liver", "spleen", "vertebrae_L1"))


@needs_data
def test_precomputed_label_maps_score_like_monais_dice_metric(tmp_path):
    """Another tool's label map (its own values and names, stored in another voxel order) is scored with
    the Dice MONAI's DiceMetric gives on the same voxels."""
    import pandas as pd
    import torch
    from monai.metrics import DiceMetric
    from scipy.ndimage import binary_erosion

    from conftest import compose_config
    from salip_bench.evaluation.harness import run
    reference = nib.load(str(CT_ABDOMEN / "labelsTr" / "tsct_001.nii.gz"))
    truth = np.asanyarray(reference.dataobj)
    predicted = np.zeros(truth.shape, np.uint8)  # the tool's own values: liver 1, spleen 2
    predicted[binary_erosion(truth == 5, iterations=2)] = 1
    predicted[np.roll(truth == 1, 2, axis=0)] = 2
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])  # stored x-reversed, with the affine that says so
    flip[0, 3] = truth.shape[0] - 1
    pred_dir = tmp_path / "pred"
    nifti(pred_dir / "tsct_001.nii.gz", predicted[::-1], reference.affine @ flip)
    (pred_dir / "labels.json").write_text(json.dumps({"1": "liver", "2": "spleen"}))
    out = tmp_path / "run"
    summary = run(compose_config(["logger=none", "cache.enabled=false", "method=precomputed", f"method.dir={pred_dir}",
                                  f"method.labels={pred_dir / 'labels.json'}", "dataset=nnunet",
                                  f"dataset.root={CT_ABDOMEN}", "dataset.organs=[liver,spleen]",
                                  f"output_dir={out}"]), out)
    assert summary["n_ok"] == 60 and summary["n_failed"] == 0
    frame = pd.read_csv(out / "results.csv")
    for organ, ours, theirs in (("liver", 5, 1), ("spleen", 1, 2)):
        metric = DiceMetric(include_background=False)
        pred_t = torch.from_numpy(predicted == theirs)[None, None].float()
        truth_t = torch.from_numpy(truth == ours)[None, None].float()
        expected = float(metric(pred_t, truth_t).item())
        # MONAI divides in float32
        assert summary["per_volume"][f"tsct_001/{organ}"]["dice_3d"] == pytest.approx(expected, abs=1e-6)
        assert summary["per_organ"][organ]["dice_3d_mean"] == pytest.approx(expected, abs=1e-6)
        # Per slice too, where the reference is not empty (MONAI leaves empty references NaN).
        z = int(np.argmax((truth == ours).sum(axis=(0, 1))))
        row = frame[frame["id"] == f"tsct_001_slice{z:03d}_{organ}"].iloc[0]
        per_slice = DiceMetric(include_background=False)(pred_t[..., z], truth_t[..., z]).item()
        assert row["dice"] == pytest.approx(per_slice, abs=1e-6)


def test_precomputed_png_masks_for_a_2d_dataset_and_a_missing_prediction(tmp_path):
    from PIL import Image

    from salip_bench.datasets.folder import FolderDataset
    from salip_bench.datasets.predictions import PredictionReader
    from salip_bench.methods.precomputed import PrecomputedMethod
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "pred").mkdir()
    labels = np.zeros((20, 30), np.uint8)
    labels[2:8, 2:8], labels[10:18, 10:25] = 1, 2
    for stem in ("a", "b"):
        Image.fromarray(np.full((20, 30), 90, np.uint8)).save(tmp_path / "images" / f"{stem}.png")
        Image.fromarray(labels).save(tmp_path / "masks" / f"{stem}_mask.png")
    Image.fromarray(((labels == 2) * 7).astype(np.uint8)).save(tmp_path / "pred" / "a.png")  # its own value 7
    (tmp_path / "labels.json").write_text(json.dumps({"1": "spleen", "2": "liver"}))
    (tmp_path / "pred" / "labels.json").write_text(json.dumps({"7": "liver"}))
    dataset = FolderDataset(str(tmp_path), labels=str(tmp_path / "labels.json"), organs=["liver"])
    method = PrecomputedMethod(PredictionReader(str(tmp_path / "pred"), str(tmp_path / "pred" / "labels.json")),
                               dir=str(tmp_path / "pred"))
    assert np.array_equal(method(dataset[0]).mask, labels == 2)
    with pytest.raises(FileNotFoundError, match="no prediction for b"):
        method(dataset[1])


def test_absent_organs_are_counted_and_skip_empty_says_it_uses_labels(tmp_path):
    from salip_bench.evaluation.organs import dataset_facts
    from salip_bench.evaluation.schema import Summary
    root = nnunet_layout(tmp_path)
    dataset = NnunetDataset(str(root), organs=["liver", "kidney_left"], skip_empty=True)
    _, labels = phantom()
    present = sorted(set(np.nonzero(np.isin(labels, [1, 2]).any(axis=(0, 1)))[0]))
    assert sorted({dataset.index[i][1] for i in range(len(dataset.index))}) == present
    records = []
    for i in range(len(dataset)):
        sample = dataset[i]
        gt = int(sample.mask.sum())
        pred = 5 if sample.meta["organ"] == "kidney_left" else 0  # a prediction on every kidney slice
        records.append({"id": sample.id, "status": "ok", "organ": sample.meta["organ"], "volume": sample.meta["volume"],
                        "dice": 1.0 if gt == pred == 0 else 0.0, "gt_area": gt, "pred_area": pred,
                        "tp": 0, "fp": pred, "fn": gt})
    facts = dataset_facts(dataset, records, Summary(), None)
    assert facts["uses_labels"] is True and facts["window"]["name"] == "abdomen"
    kidney_empty = sum(1 for r in records if r["organ"] == "kidney_left" and r["gt_area"] == 0)
    assert kidney_empty > 0  # slices kept for the liver where the kidney is absent: scored, not skipped
    assert facts["per_organ"]["kidney_left"]["n_empty_reference"] == kidney_empty
    assert facts["per_organ"]["kidney_left"]["n_false_positive_slices"] == kidney_empty
    assert facts["per_organ"]["liver"]["n_false_positive_slices"] == 0
    assert "both reference and prediction empty" in facts["empty_reference_rules"]["dice"]
    assert dataset_facts(NnunetDataset(str(root), organs=["liver"]), [], Summary(), None)["uses_labels"] is False


def test_organ_prompt_library_aliases_and_template_fallback(caplog):
    from salip_bench.class_prompts import load_class_prompts
    from salip_bench.prompts.organs import organ_prompts
    library = load_class_prompts("organs")
    btcv = ["spleen", "kidney_right", "kidney_left", "gallbladder", "esophagus", "liver", "stomach", "aorta",
            "inferior_vena_cava", "portal_vein_and_splenic_vein", "pancreas", "adrenal_gland_right",
            "adrenal_gland_left"]
    for name in btcv + ["lung_left", "lung_right", "heart", "brain", "urinary_bladder", "prostate"]:
        assert len(library[name]) >= 4, name
    with caplog.at_level("WARNING"):
        sentences, sources = organ_prompts(["Right Kidney", "IVC", "gall-bladder", "bladder", "femur_left"])
    assert sources == {"Right Kidney": "library", "IVC": "library", "gall-bladder": "library", "bladder": "library",
                       "femur_left": "template"}
    assert sentences["Right Kidney"] == library["kidney_right"] and sentences["bladder"] == library["urinary_bladder"]
    assert all("femur left" in s for s in sentences["femur_left"])
    assert "femur_left" in caplog.text and "prompt_source: template" in caplog.text


@pytest.mark.parametrize("ending", [".nrrd", ".mha", ".png"])
def test_nnunet_v2_other_file_endings_read_without_code_changes(tmp_path, ending):
    image, labels = phantom()
    if ending == ".png":  # a 2D nnU-Net dataset: one slice per case
        image, labels = np.clip(image[:, :, 2], 0, 255).astype(np.uint8), labels[:, :, 2]
    for case in ("c1", "c2"):
        (tmp_path / "imagesTr").mkdir(exist_ok=True)
        (tmp_path / "labelsTr").mkdir(exist_ok=True)
        sitk.WriteImage(sitk.GetImageFromArray(image), str(tmp_path / "imagesTr" / f"{case}_0000{ending}"))
        sitk.WriteImage(sitk.GetImageFromArray(labels), str(tmp_path / "labelsTr" / f"{case}{ending}"))
    (tmp_path / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MRI"}, "file_ending": ending,
                                                       "labels": {"background": 0, "liver": 1, "kidney": [2, 3]}}))
    dataset = NnunetDataset(str(tmp_path), organs="all")
    samples = [dataset[i] for i in range(len(dataset))]
    assert all(s.error is None for s in samples), samples[0].error
    kidney = sum(int(s.mask.sum()) for s in samples if s.meta["organ"] == "kidney")
    assert kidney == 2 * int(np.isin(labels, [2, 3]).sum())  # two cases with the same labels
    if ending == ".png":  # a 2D image is one slice, shown as stored
        assert len(dataset) == 2 * 2 and np.array_equal(samples[0].image[..., 0], image)
        assert np.array_equal(samples[1].mask, np.isin(labels, [2, 3]))


def test_cc359_mask_on_another_grid_is_resampled_or_fails_and_bad_pixdim_fails(tmp_path):
    from salip_bench.datasets.cc359 import CC359Dataset
    image, labels = phantom()
    brain = (labels > 0).astype(np.uint8)
    nifti(tmp_path / "Original" / "v.nii.gz", image, np.diag([2.0, 2.0, 2.0, 1.0]))
    fine = np.diag([1.0, 1.0, 1.0, 1.0])
    fine[:3, 3] = -0.5
    nifti(tmp_path / "Silver-standard" / "v_ss.nii.gz", brain.repeat(2, 0).repeat(2, 1).repeat(2, 2), fine)
    dataset = CC359Dataset(str(tmp_path))
    assert sum(int(dataset[i].mask.sum()) for i in range(len(dataset))) == int(brain.sum())
    shifted = np.diag([2.0, 2.0, 2.0, 1.0])
    shifted[:3, 3] = [6.0, 0, 0]  # same shape, moved 3 voxels: scored as aligned before
    nifti(tmp_path / "Silver-standard" / "v_ss.nii.gz", brain, shifted)
    error = CC359Dataset(str(tmp_path))[0].error
    assert "does not cover its image" in error and "6.0" in error
    nifti(tmp_path / "Original" / "v.nii", image)
    (tmp_path / "Original" / "v.nii.gz").unlink()
    raw = bytearray((tmp_path / "Original" / "v.nii").read_bytes())
    raw[76 + 4: 76 + 8] = struct.pack("<f", 0.0)
    (tmp_path / "Original" / "v.nii").write_bytes(bytes(raw))
    nifti(tmp_path / "Silver-standard" / "v_ss.nii.gz", brain)
    bad = CC359Dataset(str(tmp_path), image_pattern="*.nii")
    assert "must be finite and > 0" in bad[0].error
