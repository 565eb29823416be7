"""Dataset ``cxr``: lungs in frontal chest X-rays (Shenzhen + Montgomery, Kaggle layout)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from salip_bench.datasets.folder import FolderDataset
from salip_bench.registry import DATASETS


@DATASETS.register("cxr")
class ChestXrayDataset(FolderDataset):
    """Kaggle "Chest X-ray Masks and Labels" layout::

        root/CXR_png/<stem>.png        images (Shenzhen CHNCXR_*, Montgomery MCUCXR_*)
        root/masks/<stem>_mask.png     Shenzhen masks
        root/masks/<stem>.png          Montgomery masks (named exactly like their image)

    root: dataset folder; image_dir / mask_dir: sub-folders of root (``image_dir=images`` for a
    folder of ``images/`` + ``masks/<stem>_mask.png`` such as the cxr_lung dev set);
    mask_patterns: mask file names tried in order, formatted with ``{stem}`` and ``{name}``;
    suffixes: image extensions to list; skip_unmasked: leave out images that have no mask (the
    Kaggle set ships about 100 images without one, which would otherwise all be recorded as
    failures) instead of recording them as failed samples; shared_mask: true when several images
    (``a.png`` / ``a.jpg``) share one mask on purpose (else an error naming both).
    Ids are the images' stems,
    or their file names where stems clash (``a.png`` / ``a.jpg``), as in
    :class:`~salip_bench.datasets.folder.FolderDataset`.
    """

    def __init__(self, root: str, image_dir: str = "CXR_png", mask_dir: str = "masks",
                 mask_patterns: Sequence[str] = ("{stem}_mask.png", "{stem}.png"),
                 suffixes: Sequence[str] = (".png", ".jpg", ".jpeg"), skip_unmasked: bool = True,
                 shared_mask: bool = False) -> None:
        if isinstance(mask_patterns, str) or not mask_patterns:
            raise ValueError(f"dataset cxr: mask_patterns must be a non-empty list, got {mask_patterns!r}")
        self.mask_patterns = list(mask_patterns)
        super().__init__(root, image_dir, mask_dir, self.mask_patterns[0], suffixes, shared_mask=shared_mask)
        if skip_unmasked:
            self.image_paths = [p for p in self.image_paths if self.mask_path(p).is_file()]
            if not self.image_paths:
                raise FileNotFoundError(f"dataset cxr: no image in {self.image_dir} has a mask in {self.mask_dir} "
                                        f"named {' or '.join(self.mask_patterns)}")

    def mask_path(self, image_path: Path) -> Path:
        """The first existing mask among ``mask_patterns`` (the first pattern's name if none exists,
        so the failure message names the expected file)."""
        candidates = [self.mask_dir / p.format(stem=image_path.stem, name=image_path.name) for p in self.mask_patterns]
        return next((c for c in candidates if c.is_file()), candidates[0])
