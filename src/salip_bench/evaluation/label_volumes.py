"""Predicted slices of a :class:`~salip_bench.datasets.sliced.SlicedVolumes` dataset back into one label map
per case on the input's grid (``OUT/volumes/<case>.nii.gz``, with ``<case>.labels.json`` {value: name}
beside it when organs are named, so 3D Slicer / ITK-SNAP show the dataset's names), and per (case,
organ) 3D NSD / HD95 in mm on the image's grid and voxel order."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from PIL import Image

from salip_bench.datasets.sliced import SlicedVolumes
from salip_bench.datasets.volume_io import from_ras
from salip_bench.evaluation.nifti_files import place_slice, save_like
from salip_bench.metrics import NSD_TOLERANCE_MM, boundary_metrics
from salip_bench.storage.files import atomic_path, atomic_write_text, safe_name


def write_label_volumes(dataset: SlicedVolumes, out_dir: Path, records: list[dict],
                        tolerance: float = NSD_TOLERANCE_MM) -> dict[str, dict]:
    """Assemble each case's predicted slices (``masks/<id>.png``) into a label map and score each
    labelled (case, organ) in 3D on the evaluated slices.

    Each organ's voxels get its dataset label value (the smallest, for a merged target); where two
    organs' predictions overlap the later organ of ``dataset.organs`` wins. Slices not evaluated are 0.

    Returns:
        {volume key (``<case>`` or ``<case>/<organ>``, the records' ``volume``): {"path", "nsd_3d",
        "hd95_3d", "n_slices_written"}}.
    """
    masks_dir = out_dir / "masks"
    results: dict[str, dict] = {}
    organs = dataset.organ_names or [None]
    for case, image_path in dataset.image_paths.items():
        done = [r for r in records if r.get("status") == "ok" and r.get("volume") in
                {case, *(f"{case}/{o}" for o in organs if o)} and (masks_dir / f"{safe_name(r['id'])}.png").is_file()]
        if not done:
            continue
        entry = dataset.volume(case)
        shape = entry["image"].shape
        labels = np.zeros(shape, np.uint16)
        per_organ: dict[str | None, tuple[np.ndarray, np.ndarray, int]] = {}
        for organ in organs:
            predicted, evaluated = np.zeros(shape, bool), np.zeros(shape, bool)
            mine = [r for r in done if r.get("organ") == organ]
            for record in mine:
                with Image.open(masks_dir / f"{safe_name(record['id'])}.png") as png:
                    shown = np.asarray(png) > 0
                place_slice(predicted, dataset.axis, int(record["slice"]), shown)
                place_slice(evaluated, dataset.axis, int(record["slice"]), np.ones_like(shown))
            labels[predicted] = dataset.label_value(organ)
            per_organ[organ] = (predicted, evaluated, len(mine))
        path = out_dir / "volumes" / f"{safe_name(case)}.nii.gz"
        save_on_input_grid(labels, entry["reference"], image_path, path)
        if dataset.organ_names:
            table = {str(dataset.label_value(o)): o for o in dataset.organ_names}
            atomic_write_text(path.with_name(path.name[: -len(".nii.gz")] + ".labels.json"),
                              json.dumps(table, indent=2))
        for organ, (predicted, evaluated, n) in per_organ.items():
            key = case if organ is None else f"{case}/{organ}"
            scores: dict = {"path": str(path), "n_slices_written": n, "nsd_3d": None, "hd95_3d": None}
            if entry["labels"] is not None and n:
                truth = (np.isin(entry["labels"], sorted(dataset.targets[organ])) if organ
                         else entry["labels"] != 0) & evaluated
                metrics = boundary_metrics(predicted & evaluated, truth, entry["spacing"], tolerance)
                scores.update({"nsd_3d": metrics["nsd"], "hd95_3d": metrics["hd95"]})
            results[key] = scores
    return results


def save_on_input_grid(ras: np.ndarray, reference: sitk.Image, image_path: Path, path: Path) -> None:
    """Write a RAS+ label array on the input's grid: a NIfTI input's own header and affine (nibabel),
    any other input (DICOM series, NRRD, MHA) its SimpleITK geometry as NIfTI."""
    dtype = np.uint8 if ras.max() < 256 else np.uint16
    grid = from_ras(ras.astype(dtype), reference)
    if str(image_path).endswith((".nii", ".nii.gz")):
        source = nib.load(str(image_path))
        data = sitk.GetArrayFromImage(grid).T  # SimpleITK's (z, y, x) → the file's (i, j, k)
        save_like(data.reshape(source.shape[:3]), source, path, dtype)
        return
    with atomic_path(path, suffix=".nii.gz") as tmp:
        sitk.WriteImage(grid, str(tmp), True)
