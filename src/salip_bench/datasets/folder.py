"""Dataset ``folder``: 2D images and masks in two folders, paired by a file-name rule."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from salip_bench.datasets.base import (SegmentationDataset, file_ids, nonfinite_warning, read_image, to_binary_mask,
                                       to_rgb_uint8)
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

    A sample's id is its image's stem, or its whole file name where two images share a stem
    (ignoring case): ``a.png`` and ``a.jpg`` are the samples ``a.png`` and ``a.jpg`` (both paired
    with the mask of stem ``a``), so neither result is lost.
    prompts / top_k / max_side: see :class:`SegmentationDataset`.
    """

    def __init__(self, root: str, image_dir: str = "images", mask_dir: str = "masks",
                 mask_pattern: str = "{stem}_mask.png", suffixes: list[str] | tuple[str, ...] = IMAGE_SUFFIXES,
                 prompts: str | None = None, top_k: int | Mapping[str, int] = 1,
                 max_side: int | None = None) -> None:
        super().__init__(prompts, top_k, max_side)
        self.root = Path(root).expanduser()
        self.image_dir = self.root / image_dir
        self.mask_dir = self.root / mask_dir
        self.mask_pattern = mask_pattern
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
            self._ids, self._ids_of = file_ids(self.image_paths), self.image_paths
        return self._ids

    def mask_path(self, image_path: Path) -> Path:
        return self.mask_dir / self.mask_pattern.format(stem=image_path.stem, name=image_path.name)

    def load(self, index: int) -> Sample:
        image_path = self.image_paths[index]
        mask_path = self.mask_path(image_path)
        if not mask_path.is_file():
            raise FileNotFoundError(f"no mask {mask_path} for image {image_path.name}")
        raw = read_image(image_path)
        meta = {"image_path": str(image_path)}
        warning = nonfinite_warning(raw)
        if warning:
            meta["warning"] = warning
        mask = to_binary_mask(read_image(mask_path))
        return Sample(id=self.ids[index], image=to_rgb_uint8(raw), mask=mask, meta=meta)
