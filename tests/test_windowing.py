"""Percentile windowing (datasets/base.window_uint8) against MONAI's ScaleIntensityRangePercentiles:
the same bytes where MONAI's definition and ours agree (finite integer data), and the cases that keep
ours hand-written (NaN, a collapsed window), so the comment in window_uint8 stays true."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from monai.transforms import ScaleIntensityRangePercentiles

from conftest import MRI as MRI_DIR
from salip_bench.datasets.base import window_uint8

MRI = MRI_DIR / "mni152_2mm_T1w.nii.gz"


def monai_window(array: np.ndarray) -> np.ndarray:
    scale = ScaleIntensityRangePercentiles(lower=0.5, upper=99.5, b_min=0.0, b_max=255.0, clip=True)
    return np.round(np.asarray(scale(array[None].astype(np.float32)))[0]).astype(np.uint8)


def integer_images() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    images = {"uint16 noise": rng.integers(0, 65535, (128, 128)).astype(np.uint16),
              "uint16 skewed": rng.gamma(2, 3000, (128, 160)).clip(0, 65535).astype(np.uint16)}
    if MRI.is_file():
        import nibabel as nib

        volume = np.asanyarray(nib.load(str(MRI)).dataobj)
        images |= {"mri_brain volume": volume, "mri_brain slice": volume[:, :, volume.shape[2] // 2]}
    return images


@pytest.mark.parametrize("name", list(integer_images()))
def test_same_bytes_as_monai_on_integer_data(name: str) -> None:
    image = integer_images()[name]
    assert np.array_equal(window_uint8(image), monai_window(image))


def test_where_monai_differs_ours_stays_defined() -> None:
    rng = np.random.default_rng(0)
    collapsed = np.where(rng.random((64, 64)) < 0.996, 7, 900).astype(np.uint16)  # 0.5th = 99.5th percentile
    assert set(np.unique(window_uint8(collapsed))) == {0, 255}  # the hot pixels stay visible, at full scale
    assert not np.array_equal(window_uint8(collapsed), monai_window(collapsed))
    with_nan = rng.normal(100, 30, (32, 32)).astype(np.float32)
    with_nan[0, 0] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert np.isnan(np.asarray(ScaleIntensityRangePercentiles(0.5, 99.5, 0, 255, clip=True)(with_nan[None]))).all()
    ours = window_uint8(with_nan)
    assert ours[0, 0] == 0 and ours[1:].std() > 20  # NaN black, the rest windowed over the finite values
