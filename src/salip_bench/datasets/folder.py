"""Dataset ``folder``: 2D images and masks in two folders, paired by a file-name rule."""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from salip_bench.datasets.base import (
    SegmentationDataset,
    check_shared_masks,
    file_ids,
    nonfinite_warning,
    read_image,
    to_rgb_uint8,
)
from salip_bench.datasets.labels import names_by_value, read_label_table
from salip_bench.datasets.masks_io import read_mask_file
from salip_bench.registry import DATASETS
from salip_bench.types import Sample

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


@DATASETS.register("folder")
class FolderDataset(SegmentationDataset):
    """``root/<image_dir>/<stem>.<ext>`` paired with ``root/<mask_dir>/<mask_pattern>``.

    root: dataset folder; image_dir / mask_dir: sub-folders (relative to root); mask_pattern: mask
    file name, formatted with ``{stem}`` (image name without extension) and ``{name}``;
    suffixes: image extensions to list. Images are read as RGB uint8 and masks as bool; an image
    whose mask is missing or of another size is recorded as a failed sample. Files are listed,
    not opened, when the dataset is built: an unreadable one is a failed sample of its own.
    ``mask_dir=null``: unlabelled images, predicted and recorded without scores.

    A sample's id is its image's stem, or its whole file name where two images share a stem
    (ignoring case): ``a.png`` and ``a.jpg`` are the samples ``a.png`` and ``a.jpg`` (both paired
    with the mask of stem ``a``), so neither result is lost.
    spacing: pixel size in mm, one number or ``[row, column]``, for the boundary metrics (NSD, HD95);
    null: 1 pixel = 1 unit, and the summary says the distances are in pixels.

    Masks are read by the rule of :mod:`salip_bench.datasets.masks_io` (0/1, 0/255, 16-bit, any one
    colour, palette indices; a label map needs ``organs``). labels: a JSON label table {value: name}
    for label-map masks; organs: the structures to score, by name (``[liver, spleen]``, ``all``, or
    ``{kidney: [kidney_left, kidney_right]}`` to merge); with several targets each image gives one
    sample per organ (``<id>_<organ>``, ``organ`` column). shared_mask: true when the pairing rule
    gives several images one mask on purpose; otherwise that is an error naming both images.
    """

    def __init__(self, root: str, image_dir: str = "images", mask_dir: str | None = "masks",
                 mask_pattern: str = "{stem}_mask.png", suffixes: list[str] | tuple[str, ...] = IMAGE_SUFFIXES,
                 spacing: float | Sequence[float] | None = None, labels: str | None = None,
                 organs: object = None, shared_mask: bool = False) -> None:
        super().__init__()
        self.shared_mask = bool(shared_mask)
        self.root = Path(root).expanduser()
        self.set_targets(organs, read_label_table(labels, root=self.root) if labels else None, "dataset folder")
        self.image_dir = self.root / image_dir
        self.mask_dir = self.root / mask_dir if mask_dir is not None else None
        self.labelled = mask_dir is not None
        self.mask_pattern = mask_pattern
        self.pixel_spacing = pixel_spacing(spacing)
        self.spacing_unit = "pixel" if spacing is None else "mm"
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"dataset folder: image folder {self.image_dir} does not exist")
        wanted = {s.lower() for s in suffixes}
        self.image_paths = sorted(p for p in self.image_dir.iterdir() if p.suffix.lower() in wanted)
        if not self.image_paths:
            raise FileNotFoundError(f"dataset folder: no images with suffix {sorted(wanted)} in {self.image_dir}")

    @property
    def ids(self) -> list[str]:
        # Subclasses narrow image_paths after __init__: derive the ids from the current list, once.
        if self._ids is None or self._ids_of is not self.image_paths:
            if self.mask_dir is not None and not self.shared_mask:
                check_shared_masks({str(p): self.mask_path(p) for p in self.image_paths})
            self._ids, self._ids_of = self.organ_ids(file_ids(self.image_paths)), self.image_paths
        return self._ids

    def mask_path(self, image_path: Path) -> Path | None:
        if self.mask_dir is None:
            return None
        return self.mask_dir / self.mask_pattern.format(stem=image_path.stem, name=image_path.name)

    def spacing_of(self, image_path: Path) -> list[float]:
        """(row, column) pixel size of one image for the boundary metrics."""
        return list(self.pixel_spacing)

    def load(self, index: int) -> Sample:
        index, organ = self.split_index(index)
        image_path = self.image_paths[index]
        mask_path = self.mask_path(image_path)
        if mask_path is not None and not mask_path.is_file():
            raise FileNotFoundError(f"no mask {mask_path} for image {image_path.name}")
        raw = read_image(image_path)
        meta = {"image_path": str(image_path), "spacing": self.spacing_of(image_path)}
        warning = nonfinite_warning(raw)
        if warning:
            meta["warning"] = warning
        mask = None
        if mask_path is not None:
            mask, warnings = read_mask_file(mask_path, self.targets[organ] if organ else None,
                                            names_by_value(self.label_names) if self.label_names else None)
            self.add_warnings(meta, warnings)
        if organ:
            meta["organ"], meta["organ_parts"] = organ, self.organ_parts(organ)
            meta["organ_values"] = sorted(self.targets[organ])
        return Sample(id=self.ids[self.sample_index(index, organ)], image=to_rgb_uint8(raw), mask=mask, meta=meta)


def pixel_spacing(spacing: float | Sequence[float] | None) -> tuple[float, float]:
    """``spacing`` key → (row, column) size; None → (1, 1)."""
    if spacing is None:
        return (1.0, 1.0)
    values = [float(spacing)] * 2 if isinstance(spacing, (int, float)) else [float(v) for v in spacing]
    if len(values) != 2 or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"dataset spacing must be a finite positive number or [row, column], got {spacing!r}")
    return (values[0], values[1])
