"""What the ``dataset`` config group says besides the data: which organ prompts and how many
candidates to retrieve, the downscaling limit, and the dataset-specific result columns.

They sit in ``conf/dataset/<name>.yaml`` because they go with the data (chest X-rays: the ``lungs``
sentences, two candidates), so ``dataset.prompts=lungs dataset.top_k=2`` keeps working on the
command line; but the run reads them, not the dataset class: the registry leaves these keys out
when it builds a dataset (``DATASET_SETTINGS`` in :mod:`salip_bench.registry`).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from salip_bench.accepts import IntAtLeast, Nullable, check_settings
from salip_bench.class_prompts import load_class_prompts, top_k_per_class
from salip_bench.prompts.organs import organ_prompts

# The run settings every dataset accepts (top_k's rule, which needs the prompt set, is top_k_per_class).
ACCEPTS = {"max_side": Nullable(IntAtLeast(64))}


@dataclass(frozen=True)
class DatasetSettings:
    """The run's settings from a ``dataset`` config entry.

    Args:
        prompts: built-in prompt-set name or JSON path (``{class: [sentences]}``).
        top_k: retrieved candidates per class (>= 1): one int for every class or a mapping {class: k}.
        max_side: images whose longer side exceeds it are evaluated downscaled to it and their
            predictions scaled back to full resolution for scoring (None: never; see
            :mod:`salip_bench.evaluation.memory`).
        extra_metrics: names of extra per-sample result columns
            (:mod:`salip_bench.evaluation.extra_metrics`), e.g. ``[head_circumference]`` for HC18.
    """

    prompts: str | None = None
    top_k: int | Mapping[str, int] = 1
    max_side: int | None = None
    extra_metrics: Sequence[str] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        check_settings("dataset", ACCEPTS, {"max_side": self.max_side})

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> DatasetSettings:
        """The settings in a ``dataset`` entry; its other keys (the data's) are ignored here."""
        values = {k: cfg[k] for k in cls.__dataclass_fields__ if k in cfg}
        values["extra_metrics"] = tuple(values.get("extra_metrics") or ())
        return cls(**values)

    def class_prompts(self, organs: Sequence[str] | None = None) -> dict[str, list[str]]:
        """{class: [sentences]} of ``prompts`` (ValueError naming ``dataset.prompts`` if unusable); with
        ``organs`` (a dataset's targets by name) one class per organ, from ``prompts`` or the organ library
        (:func:`salip_bench.prompts.organs.organ_prompts`)."""
        if organs:
            return organ_prompts(list(organs), self.prompts)[0]
        return load_class_prompts(self.prompts)

    def top_k_per_class(self, organs: Sequence[str] | None = None) -> dict[str, int]:
        """{class: k} for every class of ``prompts`` (or of ``organs``)
        (:func:`~salip_bench.class_prompts.top_k_per_class`: ConfigError naming ``dataset.top_k`` if one is
        missing or < 1)."""
        classes = list(organs) if organs else list(self.class_prompts())
        return top_k_per_class(self.top_k, classes, self.prompts)
