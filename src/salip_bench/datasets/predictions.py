"""Another tool's predictions for a sample (``method=precomputed``): label maps or masks named by case id,
read by the same rules as references (:mod:`~salip_bench.datasets.masks_io`, physical-space alignment
of :mod:`~salip_bench.datasets.volume_io`), with the predictions' own label table."""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np

from salip_bench.datasets.cc359 import display_slice
from salip_bench.datasets.labels import names_by_value, read_label_table
from salip_bench.datasets.masks_io import read_mask_file, to_target
from salip_bench.datasets.volume_io import align_label, read_volume, to_ras
from salip_bench.types import Sample

VOLUME_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", "")  # "" : a DICOM folder or a file named as the case
IMAGE_ENDINGS = (".png", ".tif", ".tiff", ".bmp")


class PredictionReader:
    """Reads the prediction of a sample from ``folder``.

    Args:
        folder: the predictions: ``<case><ending>`` label maps for volume datasets (nnU-Net's and
            TotalSegmentator's output naming), ``<image stem>.png`` masks for 2D datasets.
        labels: the predictions' label table (JSON {value: name}, or a dataset.json); organs are matched
            to it by name. None: the predictions use the dataset's label values.
        pattern: the file name, formatted with ``{case}`` (volumes) / ``{stem}`` (2D); None: try the usual endings.
        cache_volumes: prediction volumes kept in memory.
    """

    def __init__(self, folder: str, labels: str | None = None, pattern: str | None = None,
                 cache_volumes: int = 2) -> None:
        self.folder = Path(folder).expanduser()
        if not self.folder.is_dir():
            raise ValueError(f"method.dir={folder}: folder {self.folder} does not exist; expected the predictions")
        self.table = read_label_table(labels, "method.labels") if labels else None
        self.pattern = pattern
        self.cache_volumes = cache_volumes
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()

    def path(self, name: str, endings: tuple[str, ...]) -> Path:
        if self.pattern:
            return self.folder / self.pattern.format(case=name, stem=name, id=name)
        for ending in endings:
            candidate = self.folder / f"{name}{ending}"
            if candidate.exists():
                return candidate
        raise FileNotFoundError(f"no prediction for {name} in {self.folder} "
                                f"(tried {', '.join(name + e for e in endings if e)})")

    def selection(self, sample: Sample) -> tuple[list[int] | None, dict[int, str] | None]:
        """The prediction's label values that make the sample's organ (None: no organ, the binary rule)."""
        organ = sample.meta.get("organ")
        if organ is None:
            return None, None
        if self.table is None:
            return list(sample.meta["organ_values"]), None
        folded = {n.casefold(): v for n, v in self.table.items()}
        parts = [organ] if organ.casefold() in folded else sample.meta.get("organ_parts", [organ])
        missing = [p for p in parts if p.casefold() not in folded]
        if missing:
            raise ValueError(f"the predictions' label table (method.labels) names no {missing[0]!r} "
                             f"(it has {', '.join(list(self.table)[:8])}...)")
        return sorted({v for p in parts for v in folded[p.casefold()]}), names_by_value(self.table)

    def __call__(self, sample: Sample) -> np.ndarray:
        """The (H, W) bool predicted mask of ``sample`` (its organ, on its slice)."""
        selection, names = self.selection(sample)
        image_path = sample.meta["image_path"]
        if "axis" not in sample.meta:  # a 2D dataset
            mask, _ = read_mask_file(self.path(Path(image_path).stem, IMAGE_ENDINGS), selection, names)
            return mask
        case = str(sample.meta["volume"]).split("/")[0]
        values = display_slice(self.volume(case, image_path), int(sample.meta["axis"]), int(sample.meta["slice"]))
        if selection is None:
            return to_target(values, what=f"prediction of {case}")[0]
        return np.isin(values, selection)

    def volume(self, case: str, image_path: str) -> np.ndarray:
        """The case's prediction on its image's grid (RAS+), aligned through physical coordinates."""
        if case not in self._cache:
            image = read_volume(image_path).image
            label = align_label(read_volume(self.path(case, VOLUME_ENDINGS)).image, image, f"prediction of {case}")
            self._cache[case] = to_ras(label)
            while len(self._cache) > self.cache_volumes:
                self._cache.popitem(last=False)
        self._cache.move_to_end(case)
        return self._cache[case]
