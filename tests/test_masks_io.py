"""The one mask-reading rule (datasets/masks_io.py) and organs by name (datasets/labels.py), on every
format users' tools write, read through the folder dataset as a run reads them."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from salip_bench.datasets.folder import FolderDataset
from salip_bench.datasets.labels import label_table, resolve_organs
from salip_bench.datasets.masks_io import decode_mask_image, to_target

SHAPE = (20, 30)


def square() -> np.ndarray:
    mask = np.zeros(SHAPE, bool)
    mask[5:15, 5:12] = True
    return mask


def layout(tmp_path: Path, mask_image: Image.Image, suffix: str = ".png", **kwargs) -> FolderDataset:
    (tmp_path / "images").mkdir(exist_ok=True)
    (tmp_path / "masks").mkdir(exist_ok=True)
    Image.fromarray(np.full(SHAPE, 90, np.uint8)).save(tmp_path / "images" / "a.png")
    mask_image.save(tmp_path / "masks" / f"a_mask{suffix}")
    return FolderDataset(str(tmp_path), mask_pattern="{stem}_mask" + suffix, **kwargs)


def colour_mask(colour: tuple[int, ...], mode: str = "RGB") -> Image.Image:
    array = np.zeros((*SHAPE, len(colour)), np.uint8)
    array[square()] = colour
    return Image.fromarray(array, mode)


@pytest.mark.parametrize("make", [
    lambda m: Image.fromarray(m.astype(np.uint8)),  # 0/1
    lambda m: Image.fromarray(m.astype(np.uint8) * 255),  # 0/255
    lambda m: Image.fromarray(m.astype(np.uint8) * 255).convert("1"),  # 1-bit
    lambda m: Image.fromarray(m.astype(np.uint16) * 65535),  # 16-bit 0/65535
    lambda m: Image.fromarray(m.astype(np.uint16)),  # 16-bit 0/1
    lambda m: Image.fromarray(m.astype(np.uint8) * 7),  # one value that is not 1 or 255
    lambda m: colour_mask((255, 0, 0)),  # red
    lambda m: colour_mask((0, 200, 0)),  # green
    lambda m: colour_mask((30, 60, 250, 255), "RGBA"),  # blue, opaque RGBA
    lambda m: colour_mask((255, 255, 0)),  # yellow
], ids=["0-1", "0-255", "1bit", "16bit-max", "16bit-0-1", "0-7", "red", "green", "blue-rgba", "yellow"])
def test_binary_masks_of_every_encoding_read_as_the_same_target(tmp_path, make):
    sample = layout(tmp_path, make(square()))[0]
    assert sample.error is None and not sample.meta.get("warning")
    assert np.array_equal(sample.mask, square())


def test_antialiased_grey_and_colour_masks_are_cut_at_half():
    grey = (square() * 255).astype(np.uint8)
    grey[5, 5:12] = 100  # a soft edge below half
    grey[14, 5:12] = 200  # and one above
    target, warnings = to_target(grey)
    expected = square()
    expected[5, 5:12] = False
    assert np.array_equal(target, expected) and not warnings
    rgb = np.zeros((*SHAPE, 3), np.uint8)
    rgb[square()] = (0, 255, 0)
    rgb[5, 5:12] = (0, 100, 0)  # a darker shade of the same green
    from salip_bench.datasets.masks_io import colour_values
    assert np.array_equal(to_target(colour_values(rgb))[0], expected)


def test_palette_masks_are_read_by_index_not_by_displayed_colour(tmp_path):
    indices = square().astype(np.uint8)  # index 1 = foreground
    image = Image.fromarray(indices, "P")
    image.putpalette([255, 255, 255, 0, 0, 0] + [0] * 762)  # index 0 shown white, index 1 black
    sample = layout(tmp_path, image)[0]
    assert sample.error is None and np.array_equal(sample.mask, square())


def test_label_map_without_a_selection_fails_the_sample_naming_the_values(tmp_path):
    labels = np.zeros(SHAPE, np.uint8)
    labels[2:6, 2:6], labels[10:15, 10:20] = 1, 2
    sample = layout(tmp_path, Image.fromarray(labels))[0]
    assert sample.mask is None and "label map (values [1, 2])" in sample.error and "dataset.organs" in sample.error
    palette = Image.fromarray(labels, "P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    assert "label map" in layout(tmp_path, palette)[0].error
    grey16 = Image.fromarray(labels.astype(np.uint16) * 1000)  # 16-bit label map, not at the top value
    assert "label map" in layout(tmp_path, grey16)[0].error


def test_colour_label_map_fails_the_sample(tmp_path):
    rgb = np.zeros((*SHAPE, 3), np.uint8)
    rgb[2:6, 2:6], rgb[10:15, 10:20] = (255, 0, 0), (0, 255, 0)
    sample = layout(tmp_path, Image.fromarray(rgb))[0]
    assert sample.mask is None and "several colours" in sample.error


def test_label_map_with_table_and_organs_gives_one_sample_per_organ(tmp_path):
    labels = np.zeros(SHAPE, np.uint8)
    labels[2:6, 2:6], labels[10:15, 10:20], labels[16:18, 0:3] = 1, 2, 3
    table = tmp_path / "labels.json"
    table.write_text(json.dumps({"1": "kidney_left", "2": "liver", "3": "kidney_right"}))
    dataset = layout(tmp_path, Image.fromarray(labels), labels=str(table),
                     organs=["liver", {"kidney": ["kidney_left", "kidney_right"]}])
    assert dataset.ids == ["a_liver", "a_kidney"]
    liver, kidney = dataset[0], dataset[1]
    assert liver.meta["organ"] == "liver" and np.array_equal(liver.mask, labels == 2)
    assert kidney.meta["organ"] == "kidney" and np.array_equal(kidney.mask, (labels == 1) | (labels == 3))


def test_value_the_table_does_not_name_is_a_warning(tmp_path):
    labels = np.zeros(SHAPE, np.uint8)
    labels[2:6, 2:6], labels[10:15, 10:20] = 2, 9
    table = tmp_path / "labels.json"
    table.write_text(json.dumps({"2": "liver"}))
    sample = layout(tmp_path, Image.fromarray(labels), labels=str(table), organs=["liver"])[0]
    assert np.array_equal(sample.mask, labels == 2)
    assert "value(s) [9] that the label table does not name" in sample.meta["warning"]


def test_non_uniform_file_decoding_to_empty_is_a_warning(tmp_path):
    rgba = np.zeros((*SHAPE, 4), np.uint8)
    rgba[..., 3][square()] = 255  # drawn only in the alpha channel
    sample = layout(tmp_path, Image.fromarray(rgba, "RGBA"))[0]
    assert sample.error is None and not sample.mask.any()
    assert "decodes to an empty mask" in sample.meta["warning"]
    empty = layout(tmp_path, Image.fromarray(np.zeros(SHAPE, np.uint8)))[0]  # uniform: an empty mask, no warning
    assert not empty.mask.any() and not empty.meta.get("warning")


def test_float_probability_masks_and_non_finite_values():
    soft = square().astype(np.float32) * 0.9
    assert np.array_equal(to_target(soft)[0], square())
    with pytest.raises(ValueError, match="non-finite"):
        to_target(np.full(SHAPE, np.nan, np.float32))


def test_decode_reports_whether_the_file_varies(tmp_path):
    Image.fromarray(np.zeros(SHAPE, np.uint8)).save(tmp_path / "u.png")
    assert not decode_mask_image(tmp_path / "u.png").varies


def test_label_tables_in_both_conventions_and_organs_by_name():
    nnunet = label_table({"background": 0, "liver": 5, "kidney": [2, 3]})
    msd = label_table({"0": "background", "1": "spleen", "2": "liver"})
    assert nnunet == {"background": [0], "liver": [5], "kidney": [2, 3]}
    assert msd == {"background": [0], "spleen": [1], "liver": [2]}
    assert resolve_organs("all", msd) == {"spleen": frozenset({1}), "liver": frozenset({2})}
    assert resolve_organs(["Liver"], msd) == {"Liver": frozenset({2})}
    with pytest.raises(ValueError, match=r"no organ 'livr' .*closest: liver"):
        resolve_organs(["livr"], msd)
    with pytest.raises(ValueError, match="label"):
        label_table({"liver": "five"})


def test_organs_without_a_label_table_is_one_line(tmp_path):
    with pytest.raises(ValueError, match="dataset.organs needs a label table"):
        layout(tmp_path, Image.fromarray(square().astype(np.uint8)), organs=["liver"])


@pytest.mark.parametrize("size", ["0", "-0.1", "nan", "inf"])
def test_hc18_csv_pixel_size_not_finite_and_positive_fails_that_image(tmp_path, size):
    outline = np.zeros(SHAPE, np.uint8)
    outline[5, 5:12] = outline[14, 5:12] = outline[5:15, 5] = outline[5:15, 11] = 255
    (tmp_path / "training_set").mkdir()
    for stem in ("good", "bad"):
        Image.fromarray(np.full(SHAPE, 90, np.uint8)).save(tmp_path / "training_set" / f"{stem}.png")
        Image.fromarray(outline).save(tmp_path / "training_set" / f"{stem}_Annotation.png")
    (tmp_path / "training_set_pixel_size_and_HC.csv").write_text(
        f"filename,pixel size(mm),head circumference (mm)\ngood.png,0.1,5.0\nbad.png,{size},5.0\n")
    from salip_bench.datasets.hc18 import HC18Dataset
    dataset = HC18Dataset(str(tmp_path))
    bad, good = dataset[dataset.ids.index("bad")], dataset[dataset.ids.index("good")]
    assert good.error is None and good.meta["spacing"] == [0.1, 0.1]
    assert bad.image is None and "expected a finite number > 0" in bad.error


@pytest.mark.parametrize("spacing", [0, -1.0, float("nan"), float("inf"), [1.0, 0.0]])
def test_config_spacing_not_finite_and_positive_is_one_line(tmp_path, spacing):
    with pytest.raises(ValueError, match="finite positive"):
        layout(tmp_path, Image.fromarray(square().astype(np.uint8)), spacing=spacing)
