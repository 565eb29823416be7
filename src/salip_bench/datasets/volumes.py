"""Dataset ``volumes``: any NIfTI volumes (any modality), masks optional, evaluated slice by slice."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


from salip_bench.datasets.cc359 import CC359Dataset
from salip_bench.registry import DATASETS


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
    cache_volumes: as for ``cc359``.
    """

    def __init__(self, root: str, image_dir: str = ".", mask_dir: str | None = ".",
                 image_pattern: str = "*.nii.gz", mask_pattern: str | None = "{id}_mask.nii.gz", axis: int = 2,
                 slice_range: Sequence[int | float] | None = None, skip_empty: bool = False,
                 cache_volumes: int = 2) -> None:
        self.labelled = mask_pattern is not None and mask_dir is not None
        if skip_empty and not self.labelled:
            raise ValueError("dataset volumes: skip_empty needs masks (mask_pattern and mask_dir set)")
        super().__init__(root, image_dir, mask_dir if mask_dir is not None else ".", image_pattern,
                         mask_pattern or "", axis, slice_range, skip_empty, cache_volumes)

    def mask_path(self, volume_id: str) -> Path | None:
        return super().mask_path(volume_id) if self.labelled else None

    def sample_meta(self, index: int) -> dict:
        meta = super().sample_meta(index)
        meta.pop("domain")  # cc359's scanner domains come from its file names; any other volume has none
        return meta
