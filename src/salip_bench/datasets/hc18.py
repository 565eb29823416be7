"""Dataset ``hc18``: fetal head in 2D ultrasound (HC18 challenge), with pixel sizes and reference circumferences."""
from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

import numpy as np
from scipy.ndimage import binary_fill_holes

from salip_bench.datasets.folder import FolderDataset
from salip_bench.registry import DATASETS
from salip_bench.types import Sample

# Names of the HC18 metadata file: as in the dev sets, and as in the official training download.
PIXEL_SIZE_CSV_NAMES = ("pixel_size_and_HC.csv", "training_set_pixel_size_and_HC.csv", "test_set_pixel_size.csv")
log = logging.getLogger(__name__)

PIXEL_SIZE_COLUMN = "pixel size(mm)"
HC_COLUMN = "head circumference (mm)"


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """An HC18 outline annotation as the filled head mask (outline included).

    ``scipy.ndimage.binary_fill_holes`` floods the background from the border with 4-connectivity,
    so a 1-pixel outline drawn with diagonal steps still closes its interior.

    Args:
        mask: the (H, W) outline, any dtype (non-zero = outline).

    Returns:
        The (H, W) bool mask.
    """
    return binary_fill_holes(np.asarray(mask, dtype=bool))


def read_pixel_sizes(path: Path) -> dict[str, tuple[float, float | None]]:
    """HC18 metadata: image stem → (pixel size in mm, reference circumference in mm or None)."""
    table = {}
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"filename", PIXEL_SIZE_COLUMN} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"dataset hc18: pixel_size_csv {path} has no column(s) {sorted(missing)}; "
                             f"found {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            reference = row.get(HC_COLUMN)
            try:
                table[Path(row["filename"]).stem] = (float(row[PIXEL_SIZE_COLUMN]),
                                                     float(reference) if reference not in (None, "") else None)
            except (TypeError, ValueError) as err:  # that image's circumference columns become None
                log.warning("dataset hc18: %s line %d skipped (%s)", path, line, err)
    return table


@DATASETS.register("hc18")
class HC18Dataset(FolderDataset):
    """HC18 layout (official training download)::

        root/training_set/<id>.png                 ultrasound image
        root/training_set/<id>_Annotation.png      ellipse outline drawn by a sonographer
        root/training_set_pixel_size_and_HC.csv    filename, pixel size(mm), head circumference (mm)

    Outlines are filled into masks at load time (outline pixels included). The us_fetal_head dev
    set keeps them apart: ``image_dir=images annotation_dir=annotations``.

    root: dataset folder; image_dir / annotation_dir: sub-folders of root (may be the same);
    annotation_suffix: an annotation is named ``<image stem><annotation_suffix>`` (such files are
    not listed as images); pixel_size_csv: metadata file relative to root, or null to look for
    the usual names in root and image_dir. Ids
    are the images' stems, or their file names where stems differ only in case or suffix
    (``a.png`` / ``a.PNG``), as in :class:`~salip_bench.datasets.folder.FolderDataset`; the CSV
    rows are matched by stem. Unparsable CSV rows are skipped with a warning. Two images paired with
    one annotation (``a.png`` / ``a.PNG``) are an error naming both unless ``shared_mask=true``.

    Each sample's ``meta`` carries the CSV's ``pixel_size_mm`` and reference ``hc_ref_mm`` (None
    without a CSV or a reference), the data of the ``head_circumference`` metric that
    ``conf/dataset/hc18.yaml`` selects (:mod:`salip_bench.evaluation.extra_metrics`).
    """

    def __init__(self, root: str, image_dir: str = "training_set", annotation_dir: str = "training_set",
                 annotation_suffix: str = "_Annotation.png", pixel_size_csv: str | None = None,
                 shared_mask: bool = False) -> None:
        super().__init__(root, image_dir, annotation_dir, "{stem}" + annotation_suffix, (".png",),
                         shared_mask=shared_mask)
        self.image_paths = [p for p in self.image_paths if not p.name.endswith(annotation_suffix)]
        if not self.image_paths:
            raise FileNotFoundError(f"dataset hc18: no images (other than *{annotation_suffix}) in {self.image_dir}")
        self.pixel_size_csv = self._find_csv(pixel_size_csv)
        self.pixel_sizes = read_pixel_sizes(self.pixel_size_csv) if self.pixel_size_csv else {}
        self.spacing_unit = "mm" if self.pixel_sizes else "pixel"

    def spacing_of(self, image_path: Path) -> list[float]:
        """The CSV's (isotropic) pixel size in mm, by image stem as the CSV names it; without a CSV
        1 pixel = 1 unit (``spacing_unit``)."""
        if not self.pixel_sizes:
            return [1.0, 1.0]
        if image_path.stem not in self.pixel_sizes:
            raise ValueError(f"dataset hc18: {self.pixel_size_csv} has no pixel size for {image_path.name}")
        size = self.pixel_sizes[image_path.stem][0]
        if not math.isfinite(size) or size <= 0:  # that image fails; used as given it makes negative circumferences
            raise ValueError(f"dataset hc18: {self.pixel_size_csv} gives {image_path.name} the pixel size {size!r}; "
                             "expected a finite number > 0 (mm)")
        return [size] * 2

    def _find_csv(self, pixel_size_csv: str | None) -> Path | None:
        if pixel_size_csv:
            path = self.root / pixel_size_csv
            if not path.is_file():
                raise FileNotFoundError(f"dataset hc18: pixel_size_csv {path} does not exist")
            return path
        candidates = [folder / name for folder in (self.root, self.image_dir) for name in PIXEL_SIZE_CSV_NAMES]
        return next((c for c in candidates if c.is_file()), None)

    def load(self, index: int) -> Sample:
        sample = super().load(index)
        sample.mask = fill_holes(sample.mask)
        pixel_size, reference = self.pixel_sizes.get(self.image_paths[index].stem, (None, None))
        sample.meta.update(pixel_size_mm=pixel_size, hc_ref_mm=reference)
        return sample
