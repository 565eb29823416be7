"""Dataset ``cc359``: brain (skull stripping) in T1 MRI volumes, evaluated slice by slice."""
from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from salip_bench.accepts import IntAtLeast, OneOf, check_settings
from salip_bench.datasets.base import SegmentationDataset, nonfinite_warning, to_rgb_uint8, window_uint8
from salip_bench.datasets.masks_io import to_target
from salip_bench.datasets.volume_io import check_nifti_pixdim
from salip_bench.registry import DATASETS
from salip_bench.types import Sample

log = logging.getLogger(__name__)

ACCEPTS = {"axis": OneOf(0, 1, 2), "cache_volumes": IntAtLeast(1)}
# CC359 file names carry vendor and field strength: CC0001_philips_15_55_M → philips_15.
DOMAIN_PATTERN = re.compile(r"(?:^|_)(ge|philips|siemens)_(15|3)(?=_|$)", re.IGNORECASE)


def scanner_domain(volume_id: str) -> str:
    """``ge_15`` | ``ge_3`` | ``philips_15`` | ``philips_3`` | ``siemens_15`` | ``siemens_3`` | ``unknown``."""
    match = DOMAIN_PATTERN.search(volume_id)
    return f"{match.group(1).lower()}_{match.group(2)}" if match else "unknown"


def canonical(path: Path) -> nib.Nifti1Image:
    """The volume reoriented to RAS+, so that one ``axis`` means the same plane for every scanner."""
    return nib.as_closest_canonical(nib.load(str(path)))


def canonical_shape(path: Path) -> tuple[int, ...]:
    """Shape after :func:`canonical`, from the header alone (reorienting would read the voxels)."""
    image = nib.load(str(path))
    ornt = nib.orientations.io_orientation(image.affine)
    shape = [0, 0, 0]
    for source_axis, (target_axis, _) in enumerate(ornt):
        shape[int(target_axis)] = image.shape[source_axis]
    return tuple(shape)


def canonical_zooms(path: Path) -> tuple[float, ...]:
    """Voxel sizes (mm) along the axes of :func:`canonical`, from the header alone."""
    image = nib.load(str(path))
    ornt = nib.orientations.io_orientation(image.affine)
    zooms = [0.0, 0.0, 0.0]
    for source_axis, (target_axis, _) in enumerate(ornt):
        zooms[int(target_axis)] = float(image.header.get_zooms()[source_axis])
    return tuple(zooms)


def on_image_grid(mask: nib.Nifti1Image, image: nib.Nifti1Image, volume_id: str) -> nib.Nifti1Image:
    """``mask`` on ``image``'s grid: as is when the affines agree; resampled nearest-neighbour through
    physical coordinates when it covers the image; else ValueError naming both geometries."""
    if mask.shape[:3] == image.shape[:3] and np.allclose(mask.affine, image.affine, atol=1e-3):
        return mask
    corners = np.array([[x, y, z, 1] for x in (0, image.shape[0] - 1) for y in (0, image.shape[1] - 1)
                        for z in (0, image.shape[2] - 1)], float)
    inside = (np.linalg.inv(mask.affine) @ image.affine @ corners.T)[:3].T
    if (inside < -0.5 - 1e-3).any() or (inside > np.asarray(mask.shape[:3]) - 0.5 + 1e-3).any():
        raise ValueError(f"mask of volume {volume_id} does not cover its image: mask shape {mask.shape[:3]}, affine "
                         f"{np.round(mask.affine, 3).tolist()}; image shape {image.shape[:3]}, affine "
                         f"{np.round(image.affine, 3).tolist()}")
    from nibabel.processing import resample_from_to
    return resample_from_to(mask, (image.shape[:3], image.affine), order=0)


def slice_spacing(zooms: Sequence[float], axis: int) -> list[float]:
    """(row, column) pixel size of a :func:`display_slice` along ``axis`` of a volume with ``zooms``:
    rows run along the later remaining axis, columns along the earlier (the slice is transposed)."""
    first, second = (a for a in range(3) if a != axis)
    return [float(zooms[second]), float(zooms[first])]


def display_slice(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """Slice ``index`` along ``axis`` of a RAS+ volume, turned so that superior (or, for axial
    slices, anterior) is at the top: the two remaining axes, transposed and flipped vertically."""
    return np.ascontiguousarray(np.flipud(np.take(volume, index, axis=axis).T))


def slice_bounds(slice_range: Sequence[int | float] | None, length: int) -> range:
    """``[start, stop]`` → slice indices; ints are indices (negative from the end), floats fractions of ``length``."""
    if slice_range is None:
        return range(length)
    if len(slice_range) != 2:
        raise ValueError(f"slice_range must be [start, stop], got {slice_range!r}")
    start, stop = (int(round(v * length)) if isinstance(v, float) else int(v) for v in slice_range)
    return range(*slice(start, stop).indices(length))


@DATASETS.register("cc359")
class CC359Dataset(SegmentationDataset):
    """Calgary-Campinas-359 layout::

        root/Original/<id>.nii.gz              T1 volume, e.g. CC0001_philips_15_55_M.nii.gz
        root/Silver-standard/<id>_ss.nii.gz    brain mask on the same grid

    Each sample is one 2D slice: ``meta = {"volume": id, "domain": scanner, "slice": index}``, so
    the run summary also holds each volume's 3D Dice and the means per scanner domain
    (``ge_15``, ``ge_3``, ``philips_15``, ``philips_3``, ``siemens_15``, ``siemens_3``, or
    ``unknown`` when the name does not say). Samples are ordered volume by volume.

    Volumes are read with nibabel and reoriented to RAS+; ``axis`` 0 / 1 / 2 then gives sagittal /
    coronal / axial slices, shown with superior (axial: anterior) at the top, so a slice's shape
    is the two other dimensions in reverse order. Intensities are windowed per volume to its
    0.5–99.5th percentiles of its finite voxels and given as uint8 RGB; a volume with NaN/Inf
    voxels gets a ``warning`` column on each of its slices (an all-non-finite one fails); masks are
    read by the rule of :mod:`salip_bench.datasets.masks_io` (a label map of several structures fails
    its slices: use ``dataset=nnunet`` with ``dataset.organs``).

    Building the dataset reads only the volumes' headers (for the slice counts). A volume whose
    header cannot be read (corrupt, not NIfTI) becomes one failed sample ``<id>_unreadable``
    naming the error, and the other volumes are evaluated. Ids (``<id>_slice012``) are unique;
    volume ids that differ only in characters unsafe in file names (``a b`` / ``a_b``) still get
    distinct record files (:func:`salip_bench.evaluation.records.safe_name`).

    root: dataset folder; image_dir / mask_dir: sub-folders of root (``.`` for root itself);
    image_pattern: glob of the volumes, ``*`` followed by a fixed suffix that is stripped to give
    the id; mask_pattern: mask file name formatted with ``{id}``; axis: 0, 1 or 2; slice_range:
    ``[start, stop]`` along the axis, ints as indices and floats as fractions (``[0.1, 0.9]``),
    null for all; skip_empty: leave out slices without brain in the ground truth (this reads every
    mask when the dataset is built); cache_volumes: volumes kept in memory.

    The mri_brain dev set (``mni152_2mm_T1w.nii.gz`` + ``mni152_2mm_brainmask.nii.gz``) loads with
    ``dataset=mni152_demo dataset.root=../shared/data/mri_brain``, i.e. ``image_dir=. mask_dir=.
    image_pattern="*_T1w.nii.gz" mask_pattern="{id}_brainmask.nii.gz"``.
    """

    def __init__(self, root: str, image_dir: str = "Original", mask_dir: str = "Silver-standard",
                 image_pattern: str = "*.nii.gz", mask_pattern: str = "{id}_ss.nii.gz", axis: int = 2,
                 slice_range: Sequence[int | float] | None = None, skip_empty: bool = False,
                 cache_volumes: int = 2) -> None:
        super().__init__()
        check_settings("dataset", ACCEPTS, {"axis": axis, "cache_volumes": cache_volumes})
        if not image_pattern.startswith("*") or any(c in image_pattern[1:] for c in "*?["):
            raise ValueError(f"dataset cc359: image_pattern must be '*' + a fixed suffix, got {image_pattern!r}")
        self.root = Path(root).expanduser()
        self.image_dir = self.root / image_dir
        self.mask_dir = self.root / mask_dir
        self.mask_pattern = mask_pattern
        self.axis = axis
        self.skip_empty = skip_empty  # it reads the labels: summary.json says uses_labels
        self.cache_volumes = max(1, int(cache_volumes))
        self._cache: OrderedDict[str, tuple[np.ndarray, np.ndarray, str | None]] = OrderedDict()
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"dataset cc359: image folder {self.image_dir} does not exist")
        suffix = image_pattern[1:]
        self.image_paths = {p.name[: len(p.name) - len(suffix)]: p for p in sorted(self.image_dir.glob(image_pattern))}
        if not self.image_paths:
            raise FileNotFoundError(f"dataset cc359: no volumes matching {image_pattern!r} in {self.image_dir}")
        # (volume id, slice index) per sample, volume-major so the volume cache is hit in order;
        # slice index None: the volume's header is unreadable, its one sample fails with the reason.
        self.index: list[tuple[str, int | None]] = []
        self.unreadable: dict[str, str] = {}
        for volume_id, path in self.image_paths.items():
            try:
                indices = slice_bounds(slice_range, canonical_shape(path)[axis])
            except Exception as err:  # one bad file must not stop the others
                log.warning("dataset cc359: cannot read the header of %s (%s): recorded as failed", path, err)
                self.unreadable[volume_id] = f"{type(err).__name__}: {err}"
                self.index.append((volume_id, None))
                continue
            if skip_empty:
                indices = self._slices_with_mask(volume_id, indices)
            self.index.extend((volume_id, i) for i in indices)
        if not self.index:
            raise ValueError(f"dataset cc359: no slices selected (axis={axis}, slice_range={slice_range}, "
                             f"skip_empty={skip_empty})")
        self._ids = [f"{volume_id}_unreadable" if i is None else f"{volume_id}_slice{i:03d}"
                     for volume_id, i in self.index]

    @property
    def ids(self) -> list[str]:
        return self._ids

    def mask_path(self, volume_id: str) -> Path:
        return self.mask_dir / self.mask_pattern.format(id=volume_id)

    def _slices_with_mask(self, volume_id: str, indices: range) -> list[int]:
        path = self.mask_path(volume_id)
        if not path.is_file():  # keep the slices: each is then recorded as failed, naming the missing mask
            log.warning("dataset cc359: no mask %s, cannot skip its empty slices", path)
            return list(indices)
        try:
            mask = np.asanyarray(canonical(path).dataobj) > 0.5
        except Exception as err:  # keep the slices: each then fails naming the mask's error
            log.warning("dataset cc359: cannot read mask %s (%s), cannot skip its empty slices", path, err)
            return list(indices)
        other_axes = tuple(a for a in range(3) if a != self.axis)
        has_brain = mask.any(axis=other_axes)
        return [i for i in indices if has_brain[i]]

    def volume(self, volume_id: str) -> tuple[np.ndarray, np.ndarray | None, str | None]:
        """(uint8 image, bool mask or None for unlabelled data, warning or None) of one RAS+ volume,
        from a small LRU cache."""
        if volume_id in self._cache:
            self._cache.move_to_end(volume_id)
            return self._cache[volume_id]
        mask_path = self.mask_path(volume_id)
        if mask_path is not None and not mask_path.is_file():
            raise FileNotFoundError(f"no mask {mask_path} for volume {volume_id}")
        check_nifti_pixdim(self.image_paths[volume_id])
        image = canonical(self.image_paths[volume_id])
        mask = on_image_grid(canonical(mask_path), image, volume_id) if mask_path is not None else None
        if image.ndim != 3:
            raise ValueError(f"volume {volume_id} has shape {image.shape}; expected 3 dimensions")
        voxels = np.asanyarray(image.dataobj)
        target, warnings = (to_target(np.asanyarray(mask.dataobj).reshape(image.shape), what=f"mask {mask_path.name}")
                            if mask is not None else (None, []))
        warning = "; ".join(w for w in [nonfinite_warning(voxels, f"volume {volume_id}"), *warnings] if w) or None
        entry = (window_uint8(voxels), target, warning)
        self._cache[volume_id] = entry
        while len(self._cache) > self.cache_volumes:
            self._cache.popitem(last=False)
        return entry

    def sample_meta(self, index: int) -> dict:
        volume_id, slice_index = self.index[index]
        meta = {"volume": volume_id, "domain": scanner_domain(volume_id),
                "image_path": str(self.image_paths[volume_id])}
        return meta if slice_index is None else {**meta, "slice": slice_index}

    def load(self, index: int) -> Sample:
        volume_id, slice_index = self.index[index]
        meta = {k: v for k, v in self.sample_meta(index).items() if k != "slice"}
        if slice_index is None:
            return Sample(id=self._ids[index], image=None, mask=None, meta=meta,
                          error=f"unreadable volume {self.image_paths[volume_id]}: {self.unreadable[volume_id]}")
        image, mask, warning = self.volume(volume_id)
        if warning:
            meta["warning"] = warning
        return Sample(id=self._ids[index], image=to_rgb_uint8(display_slice(image, self.axis, slice_index)),
                      mask=display_slice(mask, self.axis, slice_index) if mask is not None else None,
                      meta={**meta, "slice": slice_index, "spacing": self.spacing_of(volume_id)})

    spacing_unit = "mm"

    def spacing_of(self, volume_id: str) -> list[float]:
        """(row, column) voxel size in mm of this volume's slices, for the boundary metrics."""
        return slice_spacing(canonical_zooms(self.image_paths[volume_id]), self.axis)
