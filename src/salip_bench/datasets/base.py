"""What every dataset shares: safe item loading, image/mask normalisation."""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from salip_bench.class_prompts import builtin_prompt_names, load_class_prompts  # noqa: F401 (re-exported)
from salip_bench.datasets.labels import resolve_organs
from salip_bench.types import Sample

log = logging.getLogger(__name__)


def window_uint8(array: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Intensities → uint8 through the array's own low–high percentile window: a few hot pixels
    cannot darken everything else. Applied to a whole volume, all its slices share one scale.

    The window is taken over the finite values only (one NaN would make it NaN and the image
    black); NaN and -inf become 0, +inf 255. See :func:`nonfinite_warning` for recording them.

    Args:
        array: intensities of any numeric dtype and shape.
        low: lower percentile of the window (maps to 0).
        high: upper percentile of the window (maps to 255).

    Returns:
        The uint8 array, same shape.

    Raises:
        ValueError: no value is finite.
    """
    # Hand-written, not MONAI's ScaleIntensityRangePercentiles(0.5, 99.5, 0, 255, clip=True) + round:
    # that gives the same bytes on integer data (mri_brain's int16 volume and its slices, uint16
    # images) but not on the rest: it takes percentiles in float32 with torch.quantile (float32
    # noise: 2 of 65536 pixels one level off), an all-but-constant image (window lo == hi) comes
    # out unscaled (15 of 4096 pixels up to 130 levels off), and one NaN turns the whole image NaN.
    array = np.asarray(array)
    finite = np.isfinite(array) if array.dtype.kind in "fc" else None
    if finite is not None and not finite.all():
        if not finite.any():
            raise ValueError(f"no finite intensity: all {array.size} values are NaN or infinite")
        lo, hi = np.percentile(array[finite].astype(np.float32), (low, high))
        scaled = np.clip((np.nan_to_num(array.astype(np.float32), nan=-np.inf) - lo) / max(hi - lo, 1e-6), 0, 1)
        return np.round(scaled * 255).astype(np.uint8)
    array = array.astype(np.float32)
    lo, hi = np.percentile(array, (low, high))
    return np.round(np.clip((array - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)


def nonfinite_warning(array: np.ndarray, what: str = "image") -> str | None:
    """The ``warning`` column for an array with NaN/Inf values (None when all are finite)."""
    array = np.asarray(array)
    if array.dtype.kind not in "fc":
        return None
    bad = int(array.size - np.count_nonzero(np.isfinite(array)))
    if not bad:
        return None
    return (f"{what} has {bad} non-finite value(s) (NaN/Inf) of {array.size}: intensities windowed over the finite "
            "ones, NaN/-inf shown black, +inf white")


def file_ids(paths: Sequence[Path]) -> list[str]:
    """One id per file: its stem, or its whole name where stems clash (``a.png`` and ``a.jpg``).

    Stems are compared ignoring case, so no two ids differ only in case (their record files
    would be one file on a case-insensitive file system). Raises ValueError if ids still clash.
    """
    stems = Counter(p.stem.casefold() for p in paths)
    ids = [p.name if stems[p.stem.casefold()] > 1 else p.stem for p in paths]
    check_unique_ids(ids, {i: str(p) for i, p in zip(ids, paths)})
    return ids


def check_unique_ids(ids: Sequence[str], sources: Mapping[str, str] | None = None) -> None:
    """Raise ValueError naming the ids (and their files, from ``sources``) that occur twice."""
    counts = Counter(ids)
    clashing = sorted(i for i, n in counts.items() if n > 1)
    if clashing:
        named = ", ".join(f"{i} ({sources[i]})" if sources and i in sources else i for i in clashing[:5])
        raise ValueError(f"{len(clashing)} sample id(s) occur more than once: {named}; every sample needs its own id")


def to_rgb_uint8(array: np.ndarray) -> np.ndarray:
    """Grayscale, RGBA and 16-bit/float images → (H, W, 3) uint8 for SAM and CLIP.

    8-bit data is kept as is; wider data goes through :func:`window_uint8`.
    """
    if array.ndim == 3 and array.shape[2] == 4:
        array = array[..., :3]
    if array.dtype != np.uint8:
        array = window_uint8(array)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"unsupported image shape {array.shape}")
    return np.ascontiguousarray(array)


def check_shared_masks(pairs: Mapping[str, Path]) -> None:
    """Raise ValueError when a pairing rule gives two images one mask file (``dataset.shared_mask=true``
    says that is meant).

    Args:
        pairs: {image: its mask path}.
    """
    owners: dict[Path, str] = {}
    for image, mask in pairs.items():
        key = Path(mask)
        if key in owners:
            raise ValueError(f"mask {key} is paired with both {owners[key]} and {image}: each would be scored "
                             "against the same mask; fix the pairing rule, or set dataset.shared_mask=true if "
                             "they share it on purpose")
        owners[key] = image


def read_image(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        image.load()
        if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            return np.asarray(image)
        return np.asarray(image.convert("RGB") if image.mode not in ("L", "RGB") else image)


class SegmentationDataset(Dataset):
    """Base of all datasets. Subclasses implement ``ids`` and ``load(index)``; they describe the data
    only (what to retrieve and which extra columns to score are the run's settings, see
    :mod:`salip_bench.datasets.settings`). A sample that fails to load is returned with its
    ``error`` set, so the run records it and goes on.

    Sample ids are unique by construction: two files never share an id, nor the file names of
    their records (``col a`` / ``col_a``, see :func:`salip_bench.evaluation.records.safe_name`).
    """

    labelled: bool = True  # False: samples have no ground truth (they are predicted, not scored)
    spacing_unit: str = "pixel"  # unit of meta["spacing"] and so of NSD tolerance and HD95: "mm" or "pixel"

    def __init__(self) -> None:
        self._ids: list[str] | None = None

    @property
    def ids(self) -> list[str]:
        raise NotImplementedError

    def load(self, index: int) -> Sample:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Sample:
        try:
            sample = self.load(index)
            if sample.mask is not None and sample.mask.shape != sample.image.shape[:2]:
                raise ValueError(f"mask shape {sample.mask.shape} != image shape {sample.image.shape[:2]}")
            return sample
        except Exception as err:  # any unreadable sample becomes a recorded failure
            return Sample(id=self.ids[index], image=None, mask=None, meta=self.sample_meta(index),
                          error=f"{type(err).__name__}: {err}")

    def sample_meta(self, index: int) -> dict:
        """What is known of a sample without reading it (e.g. its volume), kept in its record when it fails."""
        return {}

    # Organs by name (dataset.organs): each base item (image or slice) gives one sample per target.
    targets: dict[str, frozenset[int]] | None = None  # {target: label values}; None: the mask as one target
    label_names: dict[str, list[int]] | None = None  # the label table {name: [values]}, if any

    def set_targets(self, organs: object, table: dict[str, list[int]] | None, who: str,
                    source: str = "dataset.labels") -> None:
        """Resolve ``dataset.organs`` against the label ``table`` (ValueError naming close names)."""
        self.label_names = table
        if organs is None or organs == "" or (isinstance(organs, (list, tuple)) and not organs):
            self.targets = None
            return
        if table is None:
            raise ValueError(f"{who}: dataset.organs needs a label table: dataset.labels=FILE.json ({{value: name}})")
        self.targets = resolve_organs(organs, table, source)

    @property
    def organ_names(self) -> list[str] | None:
        """The run's targets by name (their prompts are looked up by these names), or None."""
        return list(self.targets) if self.targets else None

    def organ_ids(self, base_ids: Sequence[str]) -> list[str]:
        """Sample ids: ``<base>_<organ>`` for each base item and target (organ-minor, so one image's
        organs follow each other and share its model pass), or the base ids without organs."""
        if not self.targets:
            return list(base_ids)
        return [f"{base}_{organ}" for base in base_ids for organ in self.targets]

    def split_index(self, index: int) -> tuple[int, str | None]:
        """Sample index → (base item index, organ or None)."""
        if not self.targets:
            return index, None
        base, k = divmod(index, len(self.targets))
        return base, list(self.targets)[k]

    def sample_index(self, base: int, organ: str | None) -> int:
        """Inverse of :meth:`split_index`."""
        return base if organ is None else base * len(self.targets) + list(self.targets).index(organ)

    def organ_parts(self, organ: str) -> list[str]:
        """The label-table names a target is made of (``kidney`` → ``[kidney_right, kidney_left]``), so
        another tool's label table can be matched by name (``method=precomputed``)."""
        values = self.targets[organ] if self.targets else frozenset()
        parts = [n for n, v in (self.label_names or {}).items() if v and set(v) <= values]
        return parts or [organ]

    @staticmethod
    def add_warnings(meta: dict, warnings: Sequence[str]) -> None:
        """Append ``warnings`` to the sample's ``warning`` column."""
        joined = "; ".join(([meta["warning"]] if meta.get("warning") else []) + list(warnings))
        if joined:
            meta["warning"] = joined
