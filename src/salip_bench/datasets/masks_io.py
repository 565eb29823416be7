"""The one rule for reading a reference mask, whatever tool wrote it.

A mask file decodes to an array of label values (:func:`decode_mask_image` for 2D images; volumes
come from their readers as arrays), then :func:`to_target` turns the values into the bool target:

1. **A selection is given** (``dataset.organs``, resolved through a label table): the target is the
   voxels whose value is one of the selected values. Values the table does not name are reported
   in a warning (they are not counted as any organ).
2. **No selection, at most one non-zero value** (0/1, 0/255, 0/65535, 0/7, a single colour): that
   value is the foreground.
3. **No selection, a soft mask**: floats within [0, 1], or integers whose most common non-zero value
   is the dtype's top (255 for 8-bit, 65535 for 16-bit) with grey levels below it (anti-aliased
   edges, JPEG): cut at half the top value.
4. **No selection, several other values**: a label map (one value per structure). Which structures
   count is not guessed: the sample fails, naming the values and ``dataset.organs`` /
   ``dataset.labels``.

Decoding: palette images are read by palette **index** (not by the colour shown); grey images of any
depth by value; colour images with one foreground colour (any colour, anti-aliased shades of it
included) by their brightest channel; colour images with several colours fail (a label map in
colours has no values to select by). A file that is not uniform but decodes to an empty target
(e.g. a foreground drawn only in the alpha channel) gives a warning, as the sample may be mis-read.
"""
from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

LABEL_MAP_HINT = "set dataset.organs (with dataset.labels=FILE.json, {value: name}) to choose the structures"


@dataclass
class DecodedMask:
    """A mask file's label values and what the decoding noticed.

    Args:
        values: (H, W) label values (palette indices, grey levels, or a colour's brightness).
        varies: whether the file's pixels (any channel, alpha included) are not all equal.
    """

    values: np.ndarray
    varies: bool


def decode_mask_image(path: Path | str) -> DecodedMask:
    """Read a 2D mask image into label values by the rule of this module.

    Args:
        path: a PNG / TIFF / BMP / JPEG (any mode PIL reads).

    Raises:
        ValueError: a colour image with several foreground colours.
    """
    with Image.open(path) as image:
        image.load()
        mode = image.mode
        if mode in ("P", "PA"):  # by index: the colour a viewer shows is not the label
            raw = np.asarray(image.getchannel(0) if mode == "PA" else image)
            full = np.asarray(image)
        elif mode in ("1", "L", "I", "F") or mode.startswith("I;16"):
            raw = full = np.asarray(image)
            if mode == "I" and raw.size and raw.min() >= 0 and raw.max() <= 65535:
                raw = full = raw.astype(np.uint16)  # a 16-bit PNG some PIL versions open as 32-bit
        elif mode == "LA":
            full = np.asarray(image)
            raw = full[..., 0]
        else:
            full = np.asarray(image.convert("RGBA") if "A" in mode else image.convert("RGB"))
            raw = colour_values(full[..., :3], str(path))
    varies = bool(full.size) and bool((full != full.reshape(-1, *full.shape[2:])[0]).any())
    return DecodedMask(np.asarray(raw), varies)


def colour_values(rgb: np.ndarray, name: str = "mask") -> np.ndarray:
    """(H, W, 3) uint8 → (H, W) brightness of its one foreground colour (grey images: their grey).

    Raises:
        ValueError: more than one foreground colour (shades of one colour, as anti-aliasing makes, count as one).
    """
    rgb = rgb.astype(np.int32)
    if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
        return rgb[..., 0].astype(np.uint8)
    brightness = rgb.max(axis=-1)
    lit = brightness > 0
    colours, counts = np.unique(rgb[lit], axis=0, return_counts=True)
    main = colours[np.argmax(counts)]
    # Each lit pixel should be main * t for one t in (0, 1] (a shade of it), within rounding.
    scale = brightness[lit] / max(int(main.max()), 1)
    off = np.abs(rgb[lit] - scale[:, None] * main[None, :]).max(axis=-1) > 2.5
    if off.any():
        others = [tuple(int(v) for v in c) for c in np.unique(rgb[lit][off], axis=0)[:4]]
        raise ValueError(f"{name}: colour mask with several colours ({tuple(int(v) for v in main)} and "
                         f"{others}...): a colour label map has no values to choose structures by; save it "
                         f"as a palette or grey label image and {LABEL_MAP_HINT}")
    return brightness.astype(np.uint8)


def to_target(values: np.ndarray, selection: Collection[int] | None = None,
              names: Mapping[int, str] | None = None, varies: bool | None = None,
              what: str = "mask") -> tuple[np.ndarray, list[str]]:
    """Label values → the bool target by the rule of this module, and the warnings it gives.

    Args:
        values: label values of any shape (2D slice or 3D volume).
        selection: the label values that make the target (``dataset.organs``), or None.
        names: the label table's {value: name}, to report values it does not name.
        varies: whether the source file was non-uniform (default: whether ``values`` is).
        what: how warnings and errors name the mask.

    Raises:
        ValueError: a label map without a selection, or non-finite values.
    """
    values = np.asarray(values)
    warnings: list[str] = []
    if values.dtype.kind == "b":
        values = values.astype(np.uint8)
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise ValueError(f"{what} has non-finite values (NaN/Inf): not a mask")
    present = np.unique(values[values != 0]) if values.size else np.zeros(0)
    if selection is not None:
        wanted = np.asarray(sorted(selection), dtype=np.float64)
        target = np.isin(values, wanted)
        if names is not None:
            unnamed = [v for v in present.tolist() if int(v) != v or int(v) not in names]
            if unnamed:
                warnings.append(f"{what} has value(s) {_short(unnamed)} that the label table does not name "
                                "(not counted as any organ)")
        return target, warnings
    if len(present) <= 1:
        target = values != 0
    elif _soft(values, present):
        top = 1.0 if values.dtype.kind == "f" else float(np.iinfo(values.dtype).max)
        target = values > top / 2
    else:
        raise ValueError(f"{what} is a label map (values {_short(present.tolist())}): {LABEL_MAP_HINT}")
    if varies is None:
        varies = bool(values.size) and bool((values != values.flat[0]).any())
    if varies and not target.any():
        warnings.append(f"{what} varies but decodes to an empty mask (e.g. drawn only in the alpha channel): "
                        "check that it is read as meant")
    return target, warnings


def _soft(values: np.ndarray, present: np.ndarray) -> bool:
    """A grey soft / anti-aliased binary mask rather than a label map (rule 3)."""
    if values.dtype.kind == "f":
        return bool(present.min() >= 0 and present.max() <= 1)
    if values.dtype.kind not in "ui" or values.dtype.itemsize > 2:
        return False
    top = np.iinfo(values.dtype).max
    if present.max() != top:
        return False
    lit = values[values != 0]
    return int(np.count_nonzero(lit == top)) * 2 >= lit.size


def _short(values: list) -> str:
    shown = [int(v) if float(v).is_integer() else v for v in values[:8]]
    return f"{shown}{'...' if len(values) > 8 else ''}"


def read_mask_file(path: Path | str, selection: Collection[int] | None = None,
                   names: Mapping[int, str] | None = None) -> tuple[np.ndarray, list[str]]:
    """A 2D mask image → (bool target, warnings), by :func:`decode_mask_image` and :func:`to_target`."""
    decoded = decode_mask_image(path)
    return to_target(decoded.values, selection, names, decoded.varies, what=f"mask {Path(path).name}")
