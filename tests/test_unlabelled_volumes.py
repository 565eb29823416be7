"""Whole runs (tiny random models): unlabelled images, NIfTI volumes in and out, spacing from the data;
and the W&B table / overlay helpers."""
from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import CXR, HC18, MRI, SMOKE, compose_config
from salip_bench.datasets.cc359 import display_slice
from salip_bench.evaluation.harness import run
from salip_bench.evaluation.nifti_out import write_volumes
from salip_bench.evaluation.overlays import first_overlays
from salip_bench.evaluation.records import RecordStore, results_frame
from salip_bench.evaluation.wandb_log import typed_table
from salip_bench.metrics import boundary_metrics
from salip_bench.registry import DATASETS

MRI_VOLUMES = ["dataset=volumes", f"dataset.root={MRI}", 'dataset.image_pattern="*_T1w.nii.gz"',
               'dataset.mask_pattern="{id}_brainmask.nii.gz"', "dataset.prompts=brain"]


def images_only(root, names):
    (root / "images").mkdir(parents=True)
    for name in names:
        shutil.copy(CXR / "images" / name, root / "images")
    return root


def test_unlabelled_folder_predicts_without_scores_and_gt_methods_refuse(tmp_path):
    root = images_only(tmp_path / "U", ["montgomery_demo1.jpg", "montgomery_demo2.jpg"])
    out = tmp_path / "UL"
    base = SMOKE + ["dataset=folder", f"dataset.root={root}", "dataset.mask_dir=null", "dataset.prompts=lungs",
                    "dataset.top_k=2", f"output_dir={out}"]
    summary = run(compose_config(base), out)
    frame = pd.read_csv(out / "results.csv")
    assert frame["status"].eq("ok").all() and len(frame) == 2
    assert frame[["dice", "iou", "nsd", "hd95", "gt_area"]].isna().all().all()
    assert sorted(p.name for p in (out / "masks").glob("*.png")) == ["montgomery_demo1.png", "montgomery_demo2.png"]
    assert summary["n_ok"] == 2 and summary["n_unlabelled"] == 2 and summary["dice_mean"] is None
    assert summary["n_failed"] == 0
    for method in ("gt_sam", "oracle"):
        with pytest.raises(ValueError, match=f"method={method} prompts with the ground truth.*no masks"):
            run(compose_config(base + [f"method={method}", f"output_dir={tmp_path / method}"]), tmp_path / method)


def test_volumes_run_writes_nifti_on_the_input_grid_with_3d_scores_in_mm(tmp_path):
    out = tmp_path / "V"
    summary = run(compose_config(SMOKE + MRI_VOLUMES + ["dataset.slice_range=[40,42]", f"output_dir={out}"]), out)
    source = nib.load(str(MRI / "mni152_2mm_T1w.nii.gz"))
    written = nib.load(str(out / "volumes" / "mni152_2mm.nii.gz"))
    assert written.shape == source.shape and np.array_equal(written.affine, source.affine)
    assert written.header.get_zooms() == source.header.get_zooms()
    assert written.header["qform_code"] == source.header["qform_code"]
    predicted = np.asanyarray(written.dataobj) > 0
    assert set(np.nonzero(predicted.any(axis=(0, 1)))[0]) <= {40, 41}  # only the evaluated axial slices
    frame = pd.read_csv(out / "results.csv")
    assert frame["spacing"].map(json.loads).tolist() == [[2.0, 2.0]] * 2  # voxel sizes, not pixels
    assert summary["spacing_unit"] == "mm" and "NIfTI voxel sizes" in summary["spacing_source"]
    volume = summary["per_volume"]["mni152_2mm"]
    target = np.asanyarray(nib.load(str(MRI / "mni152_2mm_brainmask.nii.gz")).dataobj) > 0.5
    target[:, :, [z for z in range(target.shape[2]) if z not in (40, 41)]] = False
    assert volume["nsd_3d"] == pytest.approx(boundary_metrics(predicted, target, [2, 2, 2])["nsd"])
    hd95 = boundary_metrics(predicted, target, [2, 2, 2])["hd95"]
    assert (volume["hd95_3d"] is None and hd95 is None) or volume["hd95_3d"] == pytest.approx(hd95)
    # Each written slice is the PNG of its sample, put back through the display orientation.
    ras = nib.as_closest_canonical(written)
    with Image.open(out / "masks" / "mni152_2mm_slice041.png") as png:
        assert np.array_equal(display_slice(np.asanyarray(ras.dataobj) > 0, 2, 41), np.asarray(png) > 0)


def test_unlabelled_volumes_are_written_without_scores(tmp_path):
    dataset = DATASETS.build({"name": "volumes", "root": str(MRI), "image_pattern": "*_T1w.nii.gz",
                              "mask_pattern": None, "slice_range": [30, 32], "prompts": "brain"})
    assert not dataset.labelled
    store = RecordStore(tmp_path)
    for index, sample_id in enumerate(dataset.ids):
        sample = dataset[index]
        assert sample.error is None and sample.mask is None
        prediction = np.zeros(sample.image.shape[:2], bool)
        prediction[10:20, 10:30] = True
        store.write({"id": sample_id, "status": "ok", "volume": sample.meta["volume"], "slice": sample.meta["slice"]},
                    prediction)
    result = write_volumes(dataset, tmp_path, store.read_all(dataset.ids))
    assert result["mni152_2mm"]["nsd_3d"] is None and result["mni152_2mm"]["n_slices_written"] == 2
    written = nib.load(result["mni152_2mm"]["path"])
    assert int(np.count_nonzero(np.asanyarray(written.dataobj))) == 2 * 10 * 20
    with pytest.raises(ValueError, match="skip_empty needs masks"):
        DATASETS.build({"name": "volumes", "root": str(MRI), "image_pattern": "*_T1w.nii.gz", "mask_pattern": None,
                        "skip_empty": True})


def test_hc18_boundary_metrics_in_mm_from_the_pixel_size_csv(tmp_path):
    out = tmp_path / "hc"
    overrides = SMOKE + ["dataset=hc18", f"dataset.root={HC18}", "dataset.image_dir=images",
                         "dataset.annotation_dir=annotations", "limit=1", f"output_dir={out}"]
    summary = run(compose_config(overrides), out)
    row = pd.read_csv(out / "results.csv", dtype={"id": str}).iloc[0]
    pixel_size = pd.read_csv(HC18 / "pixel_size_and_HC.csv").set_index("filename").loc[f"{row['id']}.png",
                                                                                         "pixel size(mm)"]
    assert json.loads(row["spacing"]) == pytest.approx([pixel_size, pixel_size])
    assert summary["spacing_unit"] == "mm" and "pixel_size_and_HC.csv" in summary["spacing_source"]
    assert summary["boundary_conventions"]["hd95"].startswith("both GT and prediction empty")
    with Image.open(out / "masks" / f"{row['id']}.png") as png:
        predicted = np.asarray(png) > 0
    target = DATASETS.build(compose_config(overrides)["dataset"])[0].mask
    expected = boundary_metrics(predicted, target, [pixel_size] * 2, 2.0)
    assert row["nsd"] == pytest.approx(expected["nsd"])
    assert row["hd95"] == pytest.approx(expected["hd95"]) if expected["hd95"] is not None else pd.isna(row["hd95"])


def test_wandb_table_accepts_a_failed_sample_first():
    """results.csv's counters are nullable Int64 (empty for a failed sample); W&B's table must take
    them whichever row comes first."""
    import wandb

    frame = results_frame([{"id": "broken", "status": "failed", "failure": "OSError: truncated"},
                           {"id": "ok", "status": "ok", "dice": 0.5, "sam_encoder_passes": 1,
                            "clip_images_encoded": 3, "n_candidates": 4}])
    typed = typed_table(frame)
    assert typed["sam_encoder_passes"].tolist() == [None, 1]  # JSON null, not NaN
    table = wandb.Table(dataframe=typed)
    assert len(table.data) == 2


def test_wandb_table_keeps_numbers_and_overlays_are_the_first_of_the_run(tmp_path):
    frame = pd.DataFrame({"id": ["a", "b"], "status": ["ok", "ok"], "dice": [0.5, None], "hd95": [3.0, None],
                          "n_kept": [3, 4], "retrieved_boxes": ["[[0, 0, 1, 1]]", None]})
    typed = typed_table(frame)
    assert typed["dice"].tolist() == [0.5, None] and typed["hd95"].tolist() == [3.0, None]
    assert typed["n_kept"].tolist() == [3, 4] and all(type(v) is int for v in typed["n_kept"])
    assert typed["retrieved_boxes"].tolist() == ["[[0, 0, 1, 1]]", ""] and typed["id"].tolist() == ["a", "b"]

    dataset = DATASETS.build({"name": "folder", "root": str(CXR), "prompts": "lungs"})
    store = RecordStore(tmp_path)
    ids = dataset.ids
    # Written in the order DDP ranks might finish them: the last sample first, one failure.
    for index in (3, 2, 0, 1):
        status = "failed" if index == 1 else "ok"
        mask = np.zeros(dataset[index].image.shape[:2], bool) if status == "ok" else None
        store.write({"id": ids[index], "status": status, "boxes": [[1.0, 2.0, 3.0, 4.0]]}, mask)
    kept = first_overlays(dataset, ids, store, 2)
    assert [sample.id for sample, _, _ in kept] == [ids[0], ids[2]]
    assert kept[0][1].boxes.tolist() == [[1.0, 2.0, 3.0, 4.0]] and kept[0][0].mask is not None
