"""Dataset ``hc18``: fetal head in 2D ultrasound (HC18 challenge), with head-circumference metrics."""
from __future__ import annotations

import csv
import logging
import math
from collections.abc import Mapping
from pathlib import Path

import cv2
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


def ellipse_circumference(mask: np.ndarray) -> float | None:
    """Perimeter in pixels of the ellipse fitted to the largest outer contour of ``mask``
    (Ramanujan's approximation), or None when the mask has no contour of at least 5 points."""
    contours, _ = cv2.findContours(np.ascontiguousarray(mask, dtype=np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_NONE)
    if not contours:
        return None
    largest = max(contours, key=cv2.contourArea)
    if len(largest) < 5:  # fitEllipse needs five points
        return None
    _, (width, height), _ = cv2.fitEllipse(largest)
    a, b = width / 2, height / 2
    return math.pi * (3 * (a + b) - math.sqrt((3 * a + b) * (a + 3 * b)))


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
    the usual names in root and image_dir. Without it the circumference columns are None.
    prompts / top_k / max_side: see :class:`~salip_bench.datasets.base.SegmentationDataset`. Ids
    are the images' stems, or their file names where stems differ only in case or suffix
    (``a.png`` / ``a.PNG``), as in :class:`~salip_bench.datasets.folder.FolderDataset`; the CSV
    rows are matched by stem. Unparsable CSV rows are skipped with a warning.

    Extra result columns: ``hc_pred_mm`` (circumference of the ellipse fitted to the predicted
    mask's largest contour × pixel size), ``hc_ref_mm`` (the CSV's reference) and ``hc_abs_err_mm``;
    each None when it cannot be computed (no pixel size, no reference, empty prediction).
    """

    def __init__(self, root: str, image_dir: str = "training_set", annotation_dir: str = "training_set",
                 annotation_suffix: str = "_Annotation.png", pixel_size_csv: str | None = None,
                 prompts: str | None = "fetal_head", top_k: int | Mapping[str, int] = 1,
                 max_side: int | None = None) -> None:
        super().__init__(root, image_dir, annotation_dir, "{stem}" + annotation_suffix, (".png",), prompts, top_k,
                         max_side)
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
        return [self.pixel_sizes[image_path.stem][0]] * 2

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
        return sample

    def extra_metrics(self, sample: Sample, prediction: np.ndarray) -> dict:
        stem = Path(sample.meta["image_path"]).stem if "image_path" in sample.meta else sample.id
        pixel_size, reference = self.pixel_sizes.get(stem, (None, None))
        circumference = ellipse_circumference(prediction)
        predicted = circumference * pixel_size if circumference is not None and pixel_size is not None else None
        error = abs(predicted - reference) if predicted is not None and reference is not None else None
        return {"hc_pred_mm": predicted, "hc_ref_mm": reference, "hc_abs_err_mm": error}
