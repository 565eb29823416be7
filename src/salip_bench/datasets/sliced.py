"""What the volume datasets of any layout share (``nnunet``, ``volumes``): cases read with their geometry
(:mod:`~salip_bench.datasets.volume_io`), label maps aligned in physical space, organs by name, CT
windows, and slices in the orientation of :mod:`~salip_bench.datasets.cc359`.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from salip_bench.datasets.base import SegmentationDataset, check_shared_masks, nonfinite_warning, to_rgb_uint8
from salip_bench.datasets.cc359 import display_slice, slice_bounds, slice_spacing
from salip_bench.datasets.labels import names_by_value
from salip_bench.datasets.masks_io import to_target
from salip_bench.datasets.volume_io import align_label, check_spacing, ras_spacing, read_volume, to_ras
from salip_bench.datasets.windows import apply_window, resolve_window
from salip_bench.types import Sample

log = logging.getLogger(__name__)


class SlicedVolumes(SegmentationDataset):
    """Cases ``{case: (image path, label path or None)}`` (from :meth:`list_cases`) as 2D slices.

    Each sample is one slice (and, with ``organs``, one organ of it: ``<case>_slice012_<organ>``).
    An image path may be a file SimpleITK reads or a folder holding one DICOM series; a label map is
    aligned to its image through physical coordinates. A case that cannot be read (or whose label map
    does not fit it) gives failed samples ``<case>_unreadable`` naming the reason.
    """

    spacing_unit = "mm"
    channel: str | None = None

    def setup(self, organs: Any, table: dict[str, list[int]] | None, table_source: str, axis: int,
              slice_range: Sequence[int | float] | None, skip_empty: bool, window: Any, modality: str | None,
              cache_volumes: int, shared_mask: bool, who: str) -> None:
        """Build the slice index: called by subclasses once ``list_cases`` can run."""
        if axis not in (0, 1, 2):
            raise ValueError(f"{who}: axis must be 0, 1 or 2, got {axis!r}")
        if skip_empty and not self.labelled:
            raise ValueError(f"{who}: skip_empty reads labels, and these cases have none")
        self.set_targets(organs, table, who, table_source)
        self.names = names_by_value(table) if table else None
        self.axis, self.skip_empty, self.slice_range = axis, skip_empty, slice_range
        self.modality = modality
        resolve_window(window, modality)  # a bad window fails here, in one line
        self.window_setting = window
        self.cases = self.list_cases()
        if not self.cases:
            raise FileNotFoundError(f"{who}: no cases found")
        if not shared_mask:
            check_shared_masks({c: p for c, (_, p) in self.cases.items() if p is not None})
        self.cache_volumes = max(1, int(cache_volumes))
        self._cache: OrderedDict[str, dict] = OrderedDict()
        self.windows: dict[str, dict] = {}  # case -> the window its slices were shown through
        self.index: list[tuple[str, int | None]] = []
        self.errors: dict[str, str] = {}
        for case in self.cases:
            try:
                if skip_empty:  # reads the labels now
                    entry = self.volume(case)
                    indices = [i for i in slice_bounds(slice_range, entry["image"].shape[axis]) if entry["present"][i]]
                else:  # the header only: a case is read when its first slice is evaluated
                    indices = list(slice_bounds(slice_range, self.ras_shape(case)[axis]))
                self.index.extend((case, i) for i in indices)
            except Exception as err:  # one bad case is failed samples, the others run
                log.warning("%s: case %s cannot be read (%s): recorded as failed", who, case, err)
                self.errors[case] = f"{type(err).__name__}: {err}"
                self.index.append((case, None))
        if not self.index:
            raise ValueError(f"{who}: no slices selected "
                             f"(axis={axis}, slice_range={slice_range}, skip_empty={skip_empty})")
        self._ids = self.organ_ids([f"{c}_unreadable" if i is None else f"{c}_slice{i:03d}" for c, i in self.index])

    def list_cases(self) -> dict[str, tuple[Path, Path | None]]:
        raise NotImplementedError

    def ras_shape(self, case: str) -> tuple[int, ...]:
        """The case's shape in RAS+ order, from the file's header when it holds one 3D image (else read)."""
        path = self.cases[case][0]
        if path.is_file():
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            if reader.GetDimension() == 3 and reader.GetNumberOfComponents() == 1:
                direction = np.abs(np.asarray(reader.GetDirection()).reshape(3, 3))
                shape = [0, 0, 0]
                for index_axis, size in enumerate(reader.GetSize()):
                    shape[int(np.argmax(direction[:, index_axis]))] = size  # LPS and RAS share the axes' order
                if sorted(shape) == sorted(reader.GetSize()) and all(shape):
                    return tuple(shape)
        return self.volume(case)["image"].shape

    @property
    def ids(self) -> list[str]:
        return self._ids

    @property
    def image_paths(self) -> dict[str, Path]:
        """{case: image path} (a file or a DICOM series folder)."""
        return {case: image for case, (image, _) in self.cases.items()}

    def mask_path(self, case: str) -> Path | None:
        return self.cases[case][1]

    def volume(self, case: str) -> dict:
        """One case, read and aligned (cached): ``image`` uint8 RAS+, ``labels`` (label values on the
        image grid, RAS+) or None, ``present`` (slices holding a chosen label), ``spacing`` (mm, RAS+
        axes), ``warnings``, ``window``, ``reference`` (the image's SimpleITK geometry)."""
        if case in self._cache:
            self._cache.move_to_end(case)
            return self._cache[case]
        image_path, label_path = self.cases[case]
        volume = read_volume(image_path)
        image = volume.image
        if image.GetNumberOfComponentsPerPixel() > 1 or image.GetDimension() > 3:
            image = self.pick_channel(image, case)
        voxels = to_ras(image)
        warnings = [w for w in [nonfinite_warning(voxels, f"volume {case}")] if w]
        window = resolve_window(self.window_setting, self.modality or volume.modality)  # 8-bit 2D images: as they are
        self.windows[case] = window
        spacing = ras_spacing(image)
        check_spacing(spacing, str(image_path))
        reference = sitk.Image(image.GetSize(), sitk.sitkUInt8)  # the grid, without the voxels
        reference.CopyInformation(image)
        keep = image.GetDimension() == 2 and voxels.dtype == np.uint8 and window["kind"] == "percentile"
        entry: dict = {"image": voxels if keep else apply_window(voxels, window), "labels": None, "spacing": spacing,
                       "warnings": warnings, "window": window, "reference": reference}
        if label_path is not None:
            if not label_path.exists():
                raise FileNotFoundError(f"no label file {label_path} for case {case}")
            label = align_label(read_volume(label_path).image, image, f"label map {label_path.name}")
            values = to_ras(label)
            entry["labels"] = values
            if self.names is not None:
                unnamed = [int(v) for v in np.unique(values) if v != 0 and int(v) not in self.names]
                if unnamed:
                    warnings.append(f"label map {label_path.name} has value(s) {unnamed[:8]} that the label table "
                                    "does not name (not counted as any organ)")
            chosen = np.isin(values, sorted(set().union(*self.targets.values()))) if self.targets else values != 0
            entry["present"] = chosen.any(axis=tuple(a for a in range(3) if a != self.axis))
        self._cache[case] = entry
        while len(self._cache) > self.cache_volumes:
            self._cache.popitem(last=False)
        return entry

    def pick_channel(self, image: sitk.Image, case: str) -> sitk.Image:
        """The ``channel`` of a multi-component or 4D image (ValueError when none is chosen)."""
        channels = (image.GetNumberOfComponentsPerPixel() if image.GetNumberOfComponentsPerPixel() > 1
                    else image.GetSize()[-1])
        if self.channel is None:
            raise ValueError(f"case {case} has {channels} channels (a 4D image): choose one with dataset.channel")
        index = int(self.channel)
        if index >= channels:
            raise ValueError(f"case {case} has {channels} channels; dataset.channel={index} is not one of them")
        if image.GetNumberOfComponentsPerPixel() > 1:
            return sitk.VectorIndexSelectionCast(image, index)
        size = list(image.GetSize())
        size[-1] = 0
        return sitk.Extract(image, size, [0] * (image.GetDimension() - 1) + [index])

    def sample_meta(self, index: int) -> dict:
        base, organ = self.split_index(index)
        case, slice_index = self.index[base]
        meta = {"volume": case if organ is None else f"{case}/{organ}", "case": case,
                "image_path": str(self.cases[case][0])}
        if organ is not None:
            meta["organ"] = organ
        return meta if slice_index is None else {**meta, "slice": slice_index}

    def load(self, index: int) -> Sample:
        base, organ = self.split_index(index)
        case, slice_index = self.index[base]
        meta = self.sample_meta(index)
        if slice_index is None:
            return Sample(id=self._ids[index], image=None, mask=None, meta=meta,
                          error=f"unreadable case {self.cases[case][0]}: {self.errors[case]}")
        entry = self.volume(case)
        self.add_warnings(meta, entry["warnings"])
        image = to_rgb_uint8(display_slice(entry["image"], self.axis, slice_index))
        mask = None
        if entry["labels"] is not None:
            values = display_slice(entry["labels"], self.axis, slice_index)
            if organ is not None:
                mask = np.isin(values, sorted(self.targets[organ]))
            else:
                mask, warnings = to_target(values, what=f"label map of {case}")
                self.add_warnings(meta, warnings)
        meta["spacing"] = slice_spacing(entry["spacing"], self.axis)
        meta["axis"] = self.axis  # where a slice lies in its volume (method=precomputed reads it)
        if organ is not None:
            meta["organ_parts"], meta["organ_values"] = self.organ_parts(organ), sorted(self.targets[organ])
        return Sample(id=self._ids[index], image=image, mask=mask, meta=meta)

    def volume_frames(self, meta: dict) -> tuple[int, np.ndarray]:
        """The slices of a sample's case within ``slice_range`` (all of them by default; never chosen by
        the labels, whatever ``skip_empty`` says) as :meth:`load` shows them, for methods that work on
        the whole volume: the first one's index and (N, H, W, 3) uint8 RGB frames.

        Args:
            meta: a sample's metadata (its ``case``).
        """
        entry = self.volume(meta["case"])
        bounds = slice_bounds(self.slice_range, entry["image"].shape[self.axis])
        return bounds.start, np.stack([to_rgb_uint8(display_slice(entry["image"], self.axis, i)) for i in bounds])

    def label_value(self, organ: str | None) -> int:
        """The value an organ's voxels get in the written label map: the smallest of its label values."""
        return 1 if organ is None else min(self.targets[organ])
