"""Dataset ``volumes``: any volumes (NIfTI, NRRD, MHA, or a DICOM series folder; any modality), masks or
label maps optional, evaluated slice by slice."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from salip_bench.datasets.labels import read_label_table
from salip_bench.datasets.nnunet import case_id
from salip_bench.datasets.sliced import SlicedVolumes
from salip_bench.registry import DATASETS


@DATASETS.register("volumes")
class VolumesDataset(SlicedVolumes):
    """Image/mask pairs matched by pattern::

        root/<image_dir>/<id><suffix>            image volume (or DICOM series folder), image_pattern = "*<suffix>"
        root/<mask_dir>/<mask_pattern with id>   mask or label map (optional), on any grid covering the image

    image_pattern: ``*`` + a fixed suffix (the name without it is the id), or one file / folder name
    (e.g. ``series`` for a DICOM folder; its id is the name without extension); mask_pattern: the mask's
    name, formatted with ``{id}``; ``mask_pattern=null`` (or ``mask_dir=null``): unlabelled volumes,
    predicted and written out without scores; a file matching image_pattern that is another
    volume's mask (``v_mask.nii.gz`` in one folder with ``v.nii.gz``) is not a volume. labels / organs:
    a label table and the organs to score
    (as for ``nnunet``); without organs a mask must be binary (:mod:`salip_bench.datasets.masks_io`).
    Slicing (RAS+, ``axis`` 0/1/2 = sagittal/coronal/axial), ``slice_range``, ``skip_empty``, the label
    map's alignment in physical space, ``window`` / ``modality`` and ``channel`` are those of
    :class:`~salip_bench.datasets.sliced.SlicedVolumes`. Every run of a volume dataset writes its
    predicted masks as ``OUT/volumes/<id>.nii.gz`` on the input's grid.
    """

    def __init__(self, root: str, image_dir: str = ".", mask_dir: str | None = ".",
                 image_pattern: str = "*.nii.gz", mask_pattern: str | None = "{id}_mask.nii.gz", axis: int = 2,
                 slice_range: Sequence[int | float] | None = None, skip_empty: bool = False,
                 cache_volumes: int = 2, labels: str | None = None, organs: Any = None, window: Any = None,
                 modality: str | None = None, channel: int | None = None, shared_mask: bool = False) -> None:
        super().__init__()
        self.labelled = mask_pattern is not None and mask_dir is not None
        if skip_empty and not self.labelled:
            raise ValueError("dataset volumes: skip_empty needs masks (mask_pattern and mask_dir set)")
        if image_pattern.startswith("*") and any(c in image_pattern[1:] for c in "*?["):
            raise ValueError("dataset volumes: image_pattern must be '*' + a fixed suffix or one name, "
                             f"got {image_pattern!r}")
        self.root = Path(root).expanduser()
        self.image_dir = self.root / image_dir
        self.mask_dir = self.root / mask_dir if mask_dir is not None else None
        self.image_pattern, self.mask_pattern = image_pattern, mask_pattern
        self.channel = None if channel is None else str(int(channel))
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"dataset volumes: image folder {self.image_dir} does not exist")
        self.setup(organs, read_label_table(labels, root=self.root) if labels else None, f"dataset.labels={labels}",
                   axis,
                   slice_range, skip_empty, window, modality, cache_volumes, shared_mask, "dataset volumes")

    def list_cases(self) -> dict[str, tuple[Path, Path | None]]:
        if self.image_pattern.startswith("*"):
            suffix = self.image_pattern[1:]
            found = {p.name[: len(p.name) - len(suffix)]: p for p in sorted(self.image_dir.glob(self.image_pattern))}
        else:
            path = self.image_dir / self.image_pattern
            found = {case_id(path): path} if path.exists() else {}
        if not found:
            raise FileNotFoundError(f"dataset volumes: no volumes matching {self.image_pattern!r} in {self.image_dir}")
        cases = {case: (path, self.mask_dir / self.mask_pattern.format(id=case) if self.labelled else None)
                 for case, path in found.items()}
        masks = {mask for _, mask in cases.values() if mask is not None}
        return {case: pair for case, pair in cases.items() if pair[0] not in masks}  # v_mask.nii.gz is v's mask
