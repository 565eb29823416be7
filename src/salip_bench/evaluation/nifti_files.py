"""Voxel arrays to and from NIfTI files on an input's grid: the helpers both volume writers
(:mod:`~salip_bench.evaluation.nifti_out`'s binary masks and :mod:`~salip_bench.evaluation.label_volumes`'
label maps) build on."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from salip_bench.storage.files import atomic_path


def to_source_grid(canonical_data: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Undo ``nib.as_closest_canonical``: RAS+ voxel data → the axis order and directions of the
    file whose affine is ``affine``."""
    ornt = nib.orientations.io_orientation(affine)
    back = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt(("R", "A", "S")), ornt)
    return nib.orientations.apply_orientation(canonical_data, back)


def place_slice(volume: np.ndarray, axis: int, index: int, shown: np.ndarray) -> None:
    """Write a :func:`~salip_bench.datasets.cc359.display_slice`-shaped 2D array back into ``volume``."""
    np.moveaxis(volume, axis, 0)[index] = np.flipud(shown).T


def save_like(data: np.ndarray, reference: nib.Nifti1Image, path: Path, dtype: type = np.uint8) -> None:
    """Save ``data`` as ``dtype`` (uint8) NIfTI with ``reference``'s affine and (copied) header, atomically."""
    header = reference.header.copy()
    header.set_data_dtype(dtype)
    image = nib.Nifti1Image(data.astype(dtype), reference.affine, header=header)
    image.header.set_slope_inter(1, 0)
    with atomic_path(path, suffix=".nii.gz") as tmp:  # nib.save picks the format from the name
        nib.save(image, str(tmp))
