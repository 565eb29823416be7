"""Dataset ``folder``: 2D images and masks in two folders, paired by a file-name rule."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from salip_bench.datasets.base import SegmentationDataset, read_image, to_binary_mask, to_rgb_uint8
from salip_bench.registry import DATASETS
from salip_bench.types import Sample

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


@DATASETS.register("folder")
class FolderDataset(SegmentationDataset):
    """``root/<image_dir>/<stem>.<ext>`` paired with ``root/<mask_dir>/<mask_pattern>``.

    root: dataset folder; image_dir / mask_dir: sub-folders (relative to root); mask_pattern: mask
    file name, formatted with ``{stem}`` (image name without extension) and ``{name}``;
    suffixes: image extensions to list. Images are read as RGB uint8 and masks as bool; an image
    whose mask is missing or of another size is recorded as a failed sample.
    prompts / top_k: see :class:`SegmentationDataset`.
    """

    def __init__(self, root: str, image_dir: str = "images", mask_dir: str = "masks",
                 mask_pattern: str = "{stem}_mask.png", suffixes: list[str] | tuple[str, ...] = IMAGE_SUFFIXES,
                 prompts: str | None = None, top_k: int | Mapping[str, int] = 1) -> None:
        super().__init__(prompts, top_k)
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
        return [p.stem for p in self.image_paths]

    def mask_path(self, image_path: Path) -> Path:
        return self.mask_dir / self.mask_pattern.format(stem=image_path.stem, name=image_path.name)

    def load(self, index: int) -> Sample:
        image_path = self.image_paths[index]
        mask_path = self.mask_path(image_path)
        if not mask_path.is_file():
            raise FileNotFoundError(f"no mask {mask_path} for image {image_path.name}")
        image = to_rgb_uint8(read_image(image_path))
        mask = to_binary_mask(read_image(mask_path))
        return Sample(id=image_path.stem, image=image, mask=mask, meta={"image_path": str(image_path)})
