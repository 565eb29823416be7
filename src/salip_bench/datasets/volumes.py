"""Dataset ``volumes``: any NIfTI volumes (any modality), masks optional, evaluated slice by slice."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from salip_bench.datasets.base import to_rgb_uint8, window_uint8
from salip_bench.datasets.cc359 import CC359Dataset, canonical, display_slice
from salip_bench.registry import DATASETS
from salip_bench.types import Sample


@DATASETS.register("volumes")
class VolumesDataset(CC359Dataset):
    """Image/mask NIfTI pairs matched by pattern::

        root/<image_dir>/<id><suffix>            image volume, image_pattern = "*<suffix>"
        root/<mask_dir>/<mask_pattern with id>   mask on the same grid (optional)

    Slicing, orientation (RAS+, ``axis`` 0/1/2 = sagittal/coronal/axial), ``slice_range``,
    ``skip_empty`` and the per-volume windowing are those of :class:`~salip_bench.datasets.cc359.CC359Dataset`;
    unlike it, no scanner domain is read from the names. ``mask_pattern=null`` (or ``mask_dir=null``):
    unlabelled volumes, predicted and written out without scores. Every run of a volume dataset
    writes its predicted masks as ``OUT/volumes/<id>.nii.gz`` on the input's grid.

    root / image_dir / mask_dir / image_pattern / mask_pattern / axis / slice_range / skip_empty /
    cache_volumes / prompts / top_k: as for ``cc359``.
    """

    def __init__(self, root: str, image_dir: str = ".", mask_dir: str | None = ".",
                 image_pattern: str = "*.nii.gz", mask_pattern: str | None = "{id}_mask.nii.gz", axis: int = 2,
                 slice_range: Sequence[int | float] | None = None, skip_empty: bool = False,
                 cache_volumes: int = 2, prompts: str | None = None, top_k: int | Mapping[str, int] = 1) -> None:
        self.labelled = mask_pattern is not None and mask_dir is not None
        if skip_empty and not self.labelled:
            raise ValueError("dataset volumes: skip_empty needs masks (mask_pattern and mask_dir set)")
        super().__init__(root, image_dir, mask_dir if mask_dir is not None else ".", image_pattern,
                         mask_pattern or "", axis, slice_range, skip_empty, cache_volumes, prompts, top_k)

    def mask_path(self, volume_id: str) -> Path | None:
        return super().mask_path(volume_id) if self.labelled else None

    def volume(self, volume_id: str) -> tuple[np.ndarray, np.ndarray | None]:  # type: ignore[override]
        """(uint8 image, bool mask or None) of one RAS+ volume, from a small LRU cache."""
        if self.labelled:
            return super().volume(volume_id)
        if volume_id not in self._cache:
            image = canonical(self.image_paths[volume_id])
            if image.ndim != 3:
                raise ValueError(f"volume {volume_id} has shape {image.shape}; expected 3 dimensions")
            self._cache[volume_id] = (window_uint8(np.asanyarray(image.dataobj)), None)
            while len(self._cache) > self.cache_volumes:
                self._cache.popitem(last=False)
        self._cache.move_to_end(volume_id)
        return self._cache[volume_id]

    def load(self, index: int) -> Sample:
        volume_id, slice_index = self.index[index]
        image, mask = self.volume(volume_id)
        return Sample(id=self._ids[index], image=to_rgb_uint8(display_slice(image, self.axis, slice_index)),
                      mask=display_slice(mask, self.axis, slice_index) if mask is not None else None,
                      meta={"volume": volume_id, "slice": slice_index, "image_path": str(self.image_paths[volume_id]),
                            "spacing": self.spacing_of(volume_id)})
