"""Dataset ``nnunet``: a folder with a ``dataset.json`` in the nnU-Net v2 raw or the Medical Segmentation
Decathlon layout, organs picked by name from its label table, evaluated slice by slice.

nnU-Net v2 raw::

    dataset.json      channel_names {"0": "CT"}, labels {name: value | [values]}, file_ending
    imagesTr/<case>_<4-digit channel><file_ending>   labelsTr/<case><file_ending>   imagesTs/ (unlabelled)

MSD::

    dataset.json      modality {"0": "CT"}, labels {"value": name}, training [{image, label}], test [paths]
"""
from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from salip_bench.datasets.labels import label_table, read_label_table
from salip_bench.datasets.sliced import SlicedVolumes
from salip_bench.registry import DATASETS


def read_dataset_json(root: Path) -> dict:
    """``root/dataset.json``, checked for a ``labels`` entry (ValueError in one line otherwise)."""
    path = root / "dataset.json"
    if not path.is_file():
        raise ValueError(f"dataset nnunet: {path} does not exist; expected an nnU-Net v2 or MSD dataset folder")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"dataset nnunet: {path} is not valid JSON ({err})") from None
    if not isinstance(data, dict) or "labels" not in data:
        raise ValueError(f"dataset nnunet: {path} has no 'labels' entry; expected {{name: value}} (nnU-Net) "
                         "or {\"value\": name} (MSD)")
    return data


def case_id(path: Path) -> str:
    """A file's name without its (double) extension: ``la_003.nii.gz`` → ``la_003``."""
    return re.sub(r"(\.nii\.gz|\.[^.]+)$", "", path.name)


@DATASETS.register("nnunet")
class NnunetDataset(SlicedVolumes):
    """Cases of an nnU-Net v2 raw or MSD dataset (the layout is told by ``dataset.json``), as 2D slices.

    root: the folder with ``dataset.json``; split: ``training`` (labelled) or ``test`` (unlabelled:
    predicted and written, not scored); channel: a channel's index or name for multi-channel cases
    (required when there are several); organs: ``[liver, spleen]``, ``all``, or mappings that merge
    (``{kidney: [kidney_left, kidney_right]}``), one sample per (slice, organ), ids
    ``<case>_slice012_<organ>``; without organs the label file must be binary (see
    :mod:`salip_bench.datasets.masks_io`); labels: a JSON label table replacing ``dataset.json``'s;
    axis / slice_range / skip_empty: as for ``cc359`` (skip_empty keeps slices where a chosen organ is
    present: it reads labels); window: CT preset (``abdomen`` (CT default), ``lung``, ``bone``,
    ``brain``, ...), ``percentile``, or ``[low, high]`` HU, null for the modality's default;
    modality: overrides ``dataset.json``'s (``channel_names`` / ``modality``) and DICOM's;
    cache_volumes: volumes kept in memory; shared_mask: cases may share a label file on purpose.

    An image path may be a folder holding one DICOM series. A label map is matched to its image
    through physical coordinates (resampled nearest-neighbour when its grid differs but covers the
    image), otherwise the case fails naming both geometries. Spacings come from the image's
    geometry (finite and > 0, else the case fails).
    """

    def __init__(self, root: str, split: str = "training", channel: int | str | None = None, organs: Any = None,
                 labels: str | None = None, axis: int = 2, slice_range: Sequence[int | float] | None = None,
                 skip_empty: bool = False, window: Any = None, modality: str | None = None,
                 cache_volumes: int = 2, shared_mask: bool = False) -> None:
        super().__init__()
        if split not in ("training", "test"):
            raise ValueError(f"dataset nnunet: split must be training or test, got {split!r}")
        self.root = Path(root).expanduser()
        self.info = read_dataset_json(self.root)
        self.split = split
        self.labelled = split == "training"
        table = (read_label_table(labels, root=self.root) if labels
                 else label_table(self.info["labels"], f"{self.root / 'dataset.json'} labels"))
        self.channels = {str(k): str(v) for k, v in
                         (self.info.get("channel_names") or self.info.get("modality") or {}).items()}
        self.channel = self._channel_key(channel)
        self.setup(organs, table, f"dataset.labels={labels}" if labels else "dataset.json", axis, slice_range,
                   skip_empty, window, modality or self.channels.get(self.channel or "0"), cache_volumes,
                   shared_mask, "dataset nnunet")

    def _channel_key(self, channel: int | str | None) -> str | None:
        if channel is None:
            if len(self.channels) > 1:
                raise ValueError(f"dataset nnunet: cases have {len(self.channels)} channels {self.channels}: "
                                 "choose one with dataset.channel (index or name)")
            return None
        for key, name in self.channels.items():
            if str(channel) == key or str(channel).casefold() == name.casefold():
                return key
        if not self.channels and str(channel).isdigit():
            return str(channel)
        raise ValueError(f"dataset nnunet: dataset.channel={channel!r} is not one of {self.channels}")

    def list_cases(self) -> dict[str, tuple[Path, Path | None]]:
        """{case: (image path, label path or None)} of the split, in either layout."""
        if "training" in self.info or "test" in self.info:  # MSD
            cases = {}
            for entry in self.info.get(self.split) or []:
                image = entry["image"] if isinstance(entry, dict) else entry
                label = entry.get("label") if isinstance(entry, dict) and self.labelled else None
                if self.labelled and not label:
                    raise ValueError(f"dataset nnunet: MSD training entry {entry!r} has no label")
                path = self.root / image
                cases[case_id(path)] = (path, self.root / label if label else None)
            return cases
        ending = self.info.get("file_ending", ".nii.gz")
        folder = self.root / ("imagesTr" if self.split == "training" else "imagesTs")
        if not folder.is_dir():
            raise ValueError(f"dataset nnunet: no folder {folder} for split={self.split}")
        pattern = re.compile(rf"^(.+)_{int(self.channel or 0):04d}{re.escape(ending)}$")
        cases = {}
        for path in sorted(folder.iterdir()):
            match = pattern.match(path.name)
            if match:
                label = self.root / "labelsTr" / f"{match.group(1)}{ending}" if self.labelled else None
                cases[match.group(1)] = (path, label)
        return cases

    def pick_channel(self, image, case):
        if "training" not in self.info and "test" not in self.info:
            raise ValueError(f"case {case} is a 4D / multi-channel image; nnU-Net v2 keeps one channel a file "
                             "(<case>_0000, <case>_0001, ...: choose one with dataset.channel)")
        return super().pick_channel(image, case)
