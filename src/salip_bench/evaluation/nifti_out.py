"""Predicted slices back into volumes: ``OUT/volumes/<id>.nii.gz`` on the input's grid, and the
per-volume boundary metrics (NSD, HD95 in mm) computed on that grid with the voxel sizes."""
from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from salip_bench.datasets.cc359 import CC359Dataset
from salip_bench.datasets.sliced import SlicedVolumes
from salip_bench.evaluation.label_volumes import write_label_volumes
from salip_bench.evaluation.nifti_files import place_slice, save_like, to_source_grid
from salip_bench.metrics import NSD_TOLERANCE_MM, boundary_metrics
from salip_bench.storage.files import safe_name

log = logging.getLogger(__name__)


def is_volume_dataset(dataset: object) -> bool:
    """Whether ``dataset`` samples slices of volumes (``cc359``, ``volumes``, ``nnunet``)."""
    return isinstance(dataset, (CC359Dataset, SlicedVolumes))


def write_volumes(dataset: CC359Dataset | SlicedVolumes, out_dir: Path, records: list[dict],
                  tolerance: float = NSD_TOLERANCE_MM) -> dict[str, dict]:
    """Assemble each volume's predicted slices (``masks/<id>.png``) into ``out_dir/volumes/<volume>.nii.gz``
    and score labelled volumes in 3D on the evaluated slices: ``nsd_3d`` / ``hd95_3d`` in mm.

    Slices that were not evaluated (outside ``slice_range``, failed) are 0 in the written mask and
    left out of the 3D scores. Returns {volume: {"path", "nsd_3d", "hd95_3d", "n_slices_written"}}.
    Datasets read with their geometry (``volumes``, ``nnunet``) write multi-label maps through
    :func:`salip_bench.evaluation.label_volumes.write_label_volumes`.
    """
    if isinstance(dataset, SlicedVolumes):
        return write_label_volumes(dataset, out_dir, records, tolerance)
    masks_dir = out_dir / "masks"
    results: dict[str, dict] = {}
    for volume_id, image_path in dataset.image_paths.items():
        done = [r for r in records if r.get("volume") == volume_id and r["status"] == "ok"
                and (masks_dir / f"{safe_name(r['id'])}.png").is_file()]
        if not done:
            continue
        source = nib.load(str(image_path))
        canonical_shape = nib.as_closest_canonical(source).shape[:3]
        predicted = np.zeros(canonical_shape, bool)
        evaluated = np.zeros(canonical_shape, bool)
        for record in done:
            with Image.open(masks_dir / f"{safe_name(record['id'])}.png") as png:
                shown = np.asarray(png) > 0
            place_slice(predicted, dataset.axis, int(record["slice"]), shown)
            place_slice(evaluated, dataset.axis, int(record["slice"]), np.ones_like(shown))
        predicted = to_source_grid(predicted, source.affine)
        path = out_dir / "volumes" / f"{safe_name(volume_id)}.nii.gz"
        save_like(predicted, source, path)
        entry: dict = {"path": str(path), "n_slices_written": len(done), "nsd_3d": None, "hd95_3d": None}
        mask_path = dataset.mask_path(volume_id)
        if mask_path is not None and mask_path.is_file():
            target = np.asanyarray(nib.load(str(mask_path)).dataobj).reshape(source.shape[:3]) > 0.5
            target &= to_source_grid(evaluated, source.affine)
            zooms = [float(z) for z in source.header.get_zooms()[:3]]
            scores = boundary_metrics(predicted, target, zooms, tolerance)
            entry.update({"nsd_3d": scores["nsd"], "hd95_3d": scores["hd95"]})
        results[volume_id] = entry
    return results
