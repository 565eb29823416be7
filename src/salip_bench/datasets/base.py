"""What every dataset shares: safe item loading, image/mask normalisation, the organ's prompts."""
from __future__ import annotations

import json
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from salip_bench.types import Sample

PROMPTS_PACKAGE = "salip_bench.prompts"


def load_class_prompts(prompts: str | Path | None) -> dict[str, list[str]]:
    """Read a ``{class: [sentences]}`` JSON file, by built-in name (``lungs``) or path."""
    if prompts in (None, "", "???"):
        raise ValueError("dataset.prompts is required: a built-in prompt set "
                         f"({', '.join(builtin_prompt_names())}) or a path to a JSON file {{class: [sentences]}}")
    path = Path(str(prompts)).expanduser()
    if not path.suffix:
        candidate = resources.files(PROMPTS_PACKAGE) / f"{prompts}.json"
        if not candidate.is_file():
            raise ValueError(f"unknown prompt set {prompts!r}; built-in: {', '.join(builtin_prompt_names())}")
        text = candidate.read_text()
    else:
        text = path.read_text()
    data = json.loads(text)
    if not isinstance(data, dict) or not data or not all(
            isinstance(v, list) and v and all(isinstance(s, str) and s.strip() for s in v) for v in data.values()):
        raise ValueError(f"prompt file {prompts} must be a JSON object {{class: [non-empty sentences]}}")
    return data


def builtin_prompt_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files(PROMPTS_PACKAGE).iterdir() if p.name.endswith(".json"))


def window_uint8(array: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Intensities → uint8 through the array's own low–high percentile window: a few hot pixels
    cannot darken everything else. Applied to a whole volume, all its slices share one scale."""
    array = array.astype(np.float32)
    lo, hi = np.percentile(array, (low, high))
    return np.round(np.clip((array - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)


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


def to_binary_mask(array: np.ndarray) -> np.ndarray:
    """Label image → bool: 0/1 and 0/255 masks alike; anti-aliased 0–255 masks are cut at half range."""
    if array.ndim == 3:
        array = array[..., 0]
    top = float(array.max()) if array.size else 0.0
    return array > (top / 2 if top > 1 else 0)


def read_image(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        image.load()
        if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            return np.asarray(image)
        return np.asarray(image.convert("RGB") if image.mode not in ("L", "RGB") else image)


class SegmentationDataset(Dataset):
    """Base of all datasets. Subclasses implement ``ids`` and ``load(index)``.

    prompts: built-in prompt-set name or JSON path; top_k: retrieved candidates per class, one
    int for every class or a mapping {class: k}. A sample that fails to load is returned with its
    ``error`` set, so the run records it and goes on.
    """

    labelled: bool = True  # False: samples have no ground truth (they are predicted, not scored)
    spacing_unit: str = "pixel"  # unit of meta["spacing"] and so of NSD tolerance and HD95: "mm" or "pixel"

    def __init__(self, prompts: str | None = None, top_k: int | Mapping[str, int] = 1) -> None:
        self.prompts = prompts
        self.top_k = top_k
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
        except Exception as err:  # noqa: BLE001 - any unreadable sample becomes a recorded failure
            return Sample(id=self.ids[index], image=None, mask=None, error=f"{type(err).__name__}: {err}")

    def extra_metrics(self, sample: Sample, prediction: np.ndarray) -> dict:
        """Dataset-specific result columns for one sample (e.g. HC18 head circumference); none by default."""
        return {}

    def class_prompts(self) -> dict[str, list[str]]:
        return load_class_prompts(self.prompts)

    def top_k_per_class(self) -> dict[str, int]:
        classes = list(self.class_prompts())
        if isinstance(self.top_k, Mapping):
            # Extra classes are fine: one mapping may serve several prompt sets (conf/experiment/tab2.yaml).
            missing = sorted(set(classes) - set(self.top_k))
            if missing:
                raise ValueError(f"dataset.top_k {dict(self.top_k)} gives no k for class(es) {missing} of prompt "
                                 f"set {self.prompts!r}")
            return {c: int(self.top_k[c]) for c in classes}
        return {c: int(self.top_k) for c in classes}
