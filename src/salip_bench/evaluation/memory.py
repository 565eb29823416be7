"""Memory-bounded samples: downscaling above ``dataset.max_side`` and a per-sample estimate.

SAM's "segment everything" upscales every decoded mask of a point batch to the full image as
float32 before thresholding, then holds the kept candidates as full-resolution booleans. Per
pixel that is about 7 bytes per mask in flight (measured with ``benchmarks``-style probes, see
the issue-10 notes), so a 6000×6000 image needs tens of GB. Two guards:

- ``dataset.max_side``: an image whose longer side exceeds it is evaluated downscaled to that
  side (image with area averaging, ground truth nearest-neighbour, for the methods that prompt
  with it); the predicted mask is scaled back to the original size, and Dice/IoU and the
  dataset's extra columns are computed there, against the original ground truth.
- before a sample runs, :func:`estimate_peak_bytes` is compared with the memory limit
  (``memory_limit_gb``, or what the system and its cgroup have available). A sample that would
  not fit is recorded as failed with the estimate and the ``max_side`` that would fit, instead
  of failing an allocation deep inside SAM or being killed by the OOM killer with the whole run.
"""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from salip_bench.types import Prediction, Sample

# Bytes per pixel, fitted to peak-RSS probes of the generator with the tiny SAM (issue-10 notes):
# ~7 per mask upscaled in one decoder batch (float32 logits, the boolean mask, stability-score
# temporaries), 1 per candidate kept as a full-resolution boolean, ~24 for the image, its ground
# truth, the prediction and scoring.
BYTES_PER_MASK_IN_FLIGHT = 7.5
BYTES_PER_CANDIDATE = 1.0
BYTES_BASE = 24.0
# Candidates assumed to survive the generator's NMS: the worst case (3 per grid point) is far
# above what SAM's quality filters keep (tens to a few hundred), and would refuse ordinary images.
ASSUMED_MAX_CANDIDATES = 256
MIN_SIDE = 64


def downscale(sample: Sample, max_side: int | None) -> tuple[Sample, float]:
    """``sample`` with its longer side brought down to ``max_side`` (unchanged if it already fits
    or ``max_side`` is None), and the scale factor applied (new size / original size)."""
    if sample.image is None or max_side is None:
        return sample, 1.0
    height, width = sample.image.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1.0:
        return sample, 1.0
    size = (max(1, round(width * scale)), max(1, round(height * scale)))  # cv2 wants (width, height)
    image = cv2.resize(sample.image, size, interpolation=cv2.INTER_AREA)
    mask = None if sample.mask is None else cv2.resize(
        sample.mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
    return replace(sample, image=image, mask=mask, meta=dict(sample.meta)), scale


def upscale(prediction: Prediction, shape: tuple[int, int], scale: float) -> Prediction:
    """A prediction made on a downscaled image, brought back to the original ``shape`` (H, W):
    the mask by bilinear interpolation cut at one half (smoother than nearest-neighbour blocks),
    the boxes, and the ``retrieved_boxes`` column, divided by ``scale``."""
    if scale == 1.0:
        return prediction
    height, width = shape
    mask = cv2.resize(prediction.mask.astype(np.uint8) * 255, (width, height), interpolation=cv2.INTER_LINEAR) >= 128
    info = dict(prediction.info)
    if isinstance(info.get("retrieved_boxes"), list):
        info["retrieved_boxes"] = [[round(float(v) / scale, 2) for v in box] for box in info["retrieved_boxes"]]
    info["processed_scale"] = round(scale, 6)
    return Prediction(mask=mask, boxes=np.asarray(prediction.boxes, np.float32) / scale, info=info)


def estimate_peak_bytes(height: int, width: int, generator: dict | None) -> int:
    """Bytes one sample of ``height`` × ``width`` pixels needs beyond the loaded models.

    generator: the ``sam_everything`` settings when the method proposes candidates with it
    (None: prompted methods, whose full-resolution work is a few masks). The decoder term is the
    worst case of its quality filters: every mask of a batch passing them.
    """
    per_pixel = BYTES_BASE
    if generator is not None:
        points = int(generator.get("points_per_side", 32)) ** 2
        in_flight = 3 * min(int(generator.get("points_per_batch", 64)), points)
        candidates = min(3 * points * (1 + 4 * int(generator.get("crop_n_layers", 0))), ASSUMED_MAX_CANDIDATES)
        per_pixel += max(BYTES_PER_MASK_IN_FLIGHT * in_flight, BYTES_PER_CANDIDATE * candidates)
    else:
        per_pixel += 4 * 8  # a handful of float32 masks at full resolution (prompted SAM, U-Net)
    return int(per_pixel * height * width)


def side_that_fits(height: int, width: int, generator: dict | None, limit_bytes: int) -> int:
    """The largest ``max_side`` at which the estimate stays under ``limit_bytes`` (at least 64)."""
    per_pixel = estimate_peak_bytes(height, width, generator) / (height * width)
    pixels = limit_bytes / per_pixel
    side = int(math.sqrt(pixels * max(height, width) / min(height, width)))
    return max(MIN_SIDE, side // 64 * 64)


def available_bytes() -> int | None:
    """Memory this process can still get: MemAvailable, capped by its cgroup (v2 or v1) limit;
    None where neither can be read (not Linux)."""
    candidates = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                candidates.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit, usage = Path(limit_file).read_text().strip(), Path(usage_file).read_text().strip()
        except OSError:
            continue
        if limit.isdigit() and int(limit) < 1 << 60:  # "max" or a huge number: no limit
            candidates.append(int(limit) - int(usage))
        break
    return min(candidates) if candidates else None


class MemoryGuard:
    """Per-sample check of :func:`estimate_peak_bytes` against the memory limit.

    limit_gb: a fixed limit in GiB (``memory_limit_gb``), or None for what is available when
    each sample starts; generator: see :func:`estimate_peak_bytes`.
    """

    def __init__(self, limit_gb: float | None, generator: dict | None) -> None:
        self.limit_gb = limit_gb
        self.generator = generator

    def refusal(self, height: int, width: int, max_side: int | None) -> str | None:
        """The failure reason when an image of this size would not fit, else None."""
        limit = int(self.limit_gb * 2**30) if self.limit_gb is not None else available_bytes()
        if limit is None:
            return None
        needed = estimate_peak_bytes(height, width, self.generator)
        if needed <= limit:
            return None
        source = "memory_limit_gb" if self.limit_gb is not None else "available memory"
        fits = side_that_fits(height, width, self.generator, limit)
        now = f" (after dataset.max_side={max_side})" if max_side else ""
        return (f"MemoryEstimate: a {height}x{width} image{now} needs about {needed / 2**30:.1f} GiB, "
                f"{source} is {limit / 2**30:.1f} GiB; not run. Set dataset.max_side={fits} (or lower) to "
                "evaluate it downscaled and scored at full resolution, or fewer generator.points_per_batch")
