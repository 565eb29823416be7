"""Volumes with their geometry: files SimpleITK reads (NIfTI, NRRD, MHA, 2D PNG, ...) or a folder
holding one DICOM series, a label map matched to its image through physical coordinates, and the
RAS+ voxel order the slicing of :mod:`salip_bench.datasets.cc359` uses.

SimpleITK (ITK's readers, GDCM for DICOM) does the reading and the nearest-neighbour resampling; by
hand are only the checks it does not make: one series per folder, no missing slice, only image
objects, finite positive spacings, and whether a label map covers its image.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

GEOMETRY_TOLERANCE = 1e-3  # relative (spacing, direction) and in voxels (origin): same grid within it
DICOM_MODALITY_TAG = "0008|0060"


@dataclass
class Volume:
    """An image as read: the SimpleITK image (geometry included) and the DICOM modality, if any."""

    image: sitk.Image
    modality: str | None = None
    source: str = ""


def read_volume(path: str | Path) -> Volume:
    """Read a volume file, or the one DICOM series in a folder (slices ordered by position, rescale
    slope / intercept applied), and check its spacing.

    Raises:
        ValueError: a folder with no, or several, DICOM series, a non-image object, a missing slice
            (uneven spacing), or a spacing that is not finite and > 0.
    """
    path = Path(path)
    volume = read_dicom_series(path) if path.is_dir() else Volume(sitk.ReadImage(str(path)), source=str(path))
    if path.name.endswith((".nii", ".nii.gz")):
        check_nifti_pixdim(path)
    check_spacing(volume.image.GetSpacing(), str(path))
    return volume


def read_dicom_series(folder: Path) -> Volume:
    """The single DICOM series of ``folder``, read by GDCM through SimpleITK (see :func:`read_volume`)."""
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    files = [f for f in sorted(folder.iterdir()) if f.is_file()]
    if not series:
        raise ValueError(f"DICOM folder {folder}: no DICOM image series among its {len(files)} file(s)")
    if len(series) > 1:
        raise ValueError(f"DICOM folder {folder} holds {len(series)} series ({', '.join(series[:4])}): "
                         "point the dataset at one series folder")
    names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0])
    others = sorted(set(map(str, files)) - set(names))
    if others:
        raise ValueError(f"DICOM folder {folder}: {len(others)} file(s) are not images of its series "
                         f"(e.g. {Path(others[0]).name}: a non-image object or another file); remove them")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(names)
    reader.MetaDataDictionaryArrayUpdateOn()
    image = reader.Execute()
    check_even_slices(reader, len(names), str(folder))
    modality = (reader.GetMetaData(0, DICOM_MODALITY_TAG).strip() if reader.HasMetaDataKey(0, DICOM_MODALITY_TAG)
                else None)
    return Volume(image, modality or None, str(folder))


def check_even_slices(reader: sitk.ImageSeriesReader, count: int, name: str) -> None:
    """ValueError when the slices' positions along their normal are not evenly spaced (a missing slice)."""
    if count < 3:
        return
    positions = []
    for i in range(count):
        if not reader.HasMetaDataKey(i, "0020|0032"):
            return
        positions.append([float(v) for v in reader.GetMetaData(i, "0020|0032").split("\\")])
    rows = ([float(v) for v in reader.GetMetaData(0, "0020|0037").split("\\")]
            if reader.HasMetaDataKey(0, "0020|0037") else [1, 0, 0, 0, 1, 0])
    normal = np.cross(rows[:3], rows[3:])
    steps = np.diff(np.sort(np.asarray(positions) @ normal))
    if steps.min() <= 0 or steps.max() - steps.min() > 0.01 * steps.max() + 1e-3:
        raise ValueError(f"DICOM series {name}: slices are not evenly spaced "
                         f"(steps {steps.min():.3g}..{steps.max():.3g} mm): "
                         "a slice is missing or duplicated")


def check_nifti_pixdim(path: Path) -> None:
    """ValueError unless the NIfTI header's spatial pixdims, as stored, are finite and non-zero: ITK's
    reader and nibabel's header check turn a zero or NaN into 1 with only a console warning."""
    import nibabel as nib
    with nib.openers.ImageOpener(str(path)) as handle:
        header = type(nib.load(str(path)).header).from_fileobj(handle, check=False)
    check_spacing(np.abs(header["pixdim"][1:1 + min(int(header["dim"][0]), 3)]), f"{path} (NIfTI pixdim)")


def check_spacing(spacing: tuple[float, ...] | list[float], source: str) -> None:
    """ValueError unless every spacing is finite and > 0."""
    values = np.asarray(spacing, dtype=np.float64)
    if not np.isfinite(values).all() or (values <= 0).any():
        raise ValueError(f"{source}: voxel spacing {tuple(float(v) for v in values)} must be finite and > 0")


def describe(image: sitk.Image) -> str:
    """One line: size, spacing, origin and orientation code of ``image``."""
    code = (sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())
            if image.GetDimension() == 3 else "2D")
    return (f"size {image.GetSize()}, spacing {tuple(round(s, 4) for s in image.GetSpacing())}, "
            f"origin {tuple(round(o, 2) for o in image.GetOrigin())} (LPS mm), axes {code} (ITK code)")


def same_grid(a: sitk.Image, b: sitk.Image, tolerance: float = GEOMETRY_TOLERANCE) -> bool:
    """Whether two images share size, spacing, direction and origin (within ``tolerance``)."""
    if a.GetSize() != b.GetSize():
        return False
    spacing = np.asarray(a.GetSpacing())
    return (np.allclose(spacing, b.GetSpacing(), rtol=tolerance)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=tolerance)
            and bool((np.abs(np.subtract(a.GetOrigin(), b.GetOrigin())) <= tolerance * spacing.min() + 1e-6).all()))


def covers(label: sitk.Image, image: sitk.Image) -> bool:
    """Whether every voxel centre of ``image`` lies inside ``label``'s grid (within half a voxel)."""
    size = np.asarray(image.GetSize()) - 1
    corners = [np.where([(c >> d) & 1 for d in range(image.GetDimension())], size, 0)
               for c in range(2 ** image.GetDimension())]
    bound = np.asarray(label.GetSize()) - 0.5
    for corner in corners:
        point = image.TransformContinuousIndexToPhysicalPoint([float(v) for v in corner])
        index = np.asarray(label.TransformPhysicalPointToContinuousIndex(point))
        if (index < -0.5 - 1e-3).any() or (index > bound + 1e-3).any():
            return False
    return True


def align_label(label: sitk.Image, image: sitk.Image, what: str = "label map") -> sitk.Image:
    """``label`` on ``image``'s grid: as is when the grids match; resampled nearest-neighbour through
    physical coordinates when it covers the image (another voxel order, another grid); else ValueError
    naming both geometries."""
    if label.GetDimension() != image.GetDimension():
        raise ValueError(f"{what} has {label.GetDimension()} dimensions, the image {image.GetDimension()}")
    if same_grid(label, image):
        label.CopyInformation(image)  # within tolerance: the image's geometry is the one kept
        return label
    if not covers(label, image):
        raise ValueError(f"{what} does not cover its image in physical space: label {describe(label)}; "
                         f"image {describe(image)}")
    return sitk.Resample(label, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, label.GetPixelID())


def to_ras(image: sitk.Image) -> np.ndarray:
    """The voxels as a numpy array in RAS+ order (x, y, z), as ``nib.as_closest_canonical`` gives them."""
    array = sitk.GetArrayFromImage(sitk.DICOMOrient(image, "LPS") if image.GetDimension() == 3 else image)
    if array.ndim == 2:
        return array.T[:, ::-1, None]  # a 2D image: one axial slice, rows top to bottom = anterior to posterior
    return np.ascontiguousarray(array.transpose(2, 1, 0)[::-1, ::-1, :])


def ras_spacing(image: sitk.Image) -> tuple[float, float, float]:
    """Voxel sizes along the axes of :func:`to_ras`."""
    if image.GetDimension() == 2:
        return (*(float(s) for s in image.GetSpacing()), 1.0)
    oriented = sitk.DICOMOrient(image, "LPS")
    return tuple(float(s) for s in oriented.GetSpacing())


def from_ras(data: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """Inverse of :func:`to_ras`: a RAS+ array back on ``reference``'s grid, voxel order and geometry."""
    if reference.GetDimension() == 2:
        out = sitk.GetImageFromArray(np.ascontiguousarray(data[:, ::-1, 0].T))
        out.CopyInformation(reference)
        return out
    lps = sitk.GetImageFromArray(np.ascontiguousarray(data[::-1, ::-1, :].transpose(2, 1, 0)))
    oriented = sitk.DICOMOrient(reference, "LPS")
    lps.CopyInformation(oriented)
    code = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(reference.GetDirection())
    back = sitk.DICOMOrient(lps, code)
    back.CopyInformation(reference)
    return back
