"""Tuning trials evaluated image by image, so that each model pass is paid once per image.

Today's alternative, one ordinary run per trial, decodes every image again in every trial although
a trial only changes settings applied after SAM's passes. Here all trials are evaluated in one
Lightning predict loop over the split: for each image, the trials sharing a point grid (the
generator's :attr:`~salip_bench.stages.generators.sam_everything.SamEverythingGenerator.grid`) share one
``initialize`` (SAM encoder and decoder, keeping every mask the lowest ``pred_iou_thresh`` among
them can pass), and each trial ``apply``-s its own thresholds to it. The engines (and so the
memoised SAM embeddings and CLIP's embedding cache) are shared by all trials. Each trial still
writes an ordinary run directory (records, masks, results.csv, summary.json): resumable, and
reported like any run. A trial's results are those of its own run, bit for bit
(tests/test_tune.py); only its work counters and seconds differ, since the first trial of an
image pays what the others reuse. The trials are targets of the run's own predict loop
(:func:`~salip_bench.evaluation.harness.evaluate`): each trial folder is locked, its samples are marked
before they run, resumed and scored as a run's are.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from salip_bench.engines.box_memo import BoxMemoStore, unwrapped
from salip_bench.evaluation.context import build_context, built_engines, stage_engines
from salip_bench.evaluation.finalize import RunTarget
from salip_bench.evaluation.harness import evaluate, open_targets
from salip_bench.evaluation.job import Job
from salip_bench.evaluation.lightning_module import ScoreMemo
from salip_bench.evaluation.predict_loop import Loop, Member, predict_module
from salip_bench.evaluation.tuned import apply_tuned
from salip_bench.registry import METHODS, Lazy
from salip_bench.storage.content_keys import hashed_once
from salip_bench.types import Candidates, Sample

log = logging.getLogger(__name__)
# The config groups a trial may change while sharing the engines (and so their passes) with the others.
STAGE_GROUPS = ("method", "generator", "filter", "retriever", "refiner")


def share_engines(configs: list[dict]) -> bool:
    """Whether the trial configs differ only in their stages (and output_dir), so one set of engines,
    one dataset and one predict loop serve them all."""
    def rest(cfg: dict) -> str:
        return json.dumps({k: v for k, v in cfg.items() if k not in (*STAGE_GROUPS, "output_dir")},
                          sort_keys=True, default=str)
    return len({rest(cfg) for cfg in configs}) == 1


class SharedDecoding:
    """The decoded grids of the image being evaluated, shared by the generators of all trials.

    A generator takes part if it has the split interface (``grid``, ``pred_iou_thresh``,
    ``initialize(image, min_pred_iou_thresh)``, ``apply(decoded)``); others run as they are.
    """

    def __init__(self) -> None:
        self.floors: dict[str, float] = {}
        self.image: np.ndarray | None = None
        self.decoded: dict[str, Any] = {}

    def wrap(self, generator: Callable[[np.ndarray], Candidates]) -> Callable[[np.ndarray], Candidates]:
        """``generator``, sharing its decodings with the other trials' generators of the same grid."""
        if not all(hasattr(generator, name) for name in ("grid", "pred_iou_thresh", "initialize", "apply")):
            return generator
        key = self.key(generator)
        self.floors[key] = min(self.floors.get(key, np.inf), float(generator.pred_iou_thresh))
        return _SharingGenerator(generator, self, key)

    @staticmethod
    def key(generator: Any) -> str:
        return json.dumps(generator.grid, sort_keys=True, default=str)

    def start(self, image: np.ndarray | None) -> None:
        """A new image: the decodings of the previous one are dropped."""
        self.image, self.decoded = image, {}

    def release(self, key: str) -> None:
        self.decoded.pop(key, None)

    def get(self, generator: Any, key: str, image: np.ndarray) -> Any:
        if image is not self.image:  # not the image being shared (a method generating for another picture)
            return generator.initialize(image)
        if key not in self.decoded:
            self.decoded[key] = generator.initialize(image, self.floors[key])
        return self.decoded[key]


class _SharingGenerator:
    """A split generator whose decoding comes from :class:`SharedDecoding` (on a proposals-cache miss)."""

    def __init__(self, generator: Any, shared: SharedDecoding, key: str) -> None:
        self.generator, self.shared, self.key = generator, shared, key

    def __call__(self, image: np.ndarray) -> Candidates:
        return self.generator(image, decoded=lambda: self.shared.get(self.generator, self.key, image))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.generator, name)


class TrialsScope:
    """What the trials share while they evaluate one image: its decodings (released per grid), the
    refiner's box memo and the score memo (cleared after the image: trials go image by image, no
    later call repeats it)."""

    def __init__(self, shared: SharedDecoding, box_memo: BoxMemoStore, score_memo: ScoreMemo) -> None:
        self.shared, self.box_memo, self.score_memo = shared, box_memo, score_memo

    @contextmanager
    def around(self, sample: Sample) -> Iterator[None]:
        try:
            with hashed_once():
                self.shared.start(sample.image)
                yield
        finally:
            self.shared.start(None)
            self.box_memo.clear()
            self.score_memo.clear()

    def release(self, key: str) -> None:
        self.shared.release(key)  # its low-res logits: 256 KB a mask


def run_trials(configs: list[dict], out_dirs: list[Path], job: Job | None = None) -> list[dict]:
    """Evaluate each trial config (an evaluation config, as ``harness.run`` takes) into its out_dir,
    image by image with shared engines and decodings, as targets of the run's own loop (locks, crash
    markers, resume, unique ids, scoring); returns their summaries in order.

    Args:
        configs: resolved trial configs that :func:`share_engines` accepts.
        out_dirs: one run directory per trial.
        job: the launching command (None: a library call).
    """
    if not share_engines([apply_tuned(cfg) for cfg in configs]):
        raise ValueError("trials that differ outside the stage groups "
                         f"{STAGE_GROUPS} cannot share engines: run them one by one (harness.run)")
    return evaluate(open_targets(configs, out_dirs, job), plan_trials)


def plan_trials(targets: list[RunTarget], pending: list[list[int]]) -> Loop:
    """The loop of the trials: one set of engines built once, each trial's method around them, the
    generators of one point grid sharing each image's decoding.

    Args:
        targets: the trials' runs; pending: their pending indices.
    """
    shared, models, box_memo, score_memo = SharedDecoding(), {}, BoxMemoStore(), ScoreMemo()
    members, groups = [], {}
    for number, (target, todo) in enumerate(zip(targets, pending)):
        context = build_context(target.cfg, target.dataset, **models, box_memo=box_memo)
        inner = context["generator"]
        context["generator"] = Lazy(lambda inner=inner: shared.wrap(inner()))
        before = getattr(models.get("clip"), "texts_encoded", 0)
        method = METHODS.build(target.cfg["method"], **context)
        # The refiner's engine too (moved to the device, counted, reported), without its memo wrapper.
        models.update({k: unwrapped(e) for k, e in built_engines(context).items()})
        texts = getattr(models.get("clip"), "texts_encoded", 0) - before
        generator = context["generator"]() if context["generator"].built else None
        key = generator.key if isinstance(generator, _SharingGenerator) else None
        groups.setdefault(key or f"alone:{number}", (key, []))[1].append(number)
        module = predict_module(target.cfg, method, models, target.fingerprint, generator is not None, score_memo)
        members.append(Member(target, todo, module, stage_engines(context), texts))
    for member in members:  # engines a later trial built first are counted for every trial
        member.module.counters.engines = models
    return Loop(members, models, list(groups.values()), TrialsScope(shared, box_memo, score_memo), ["tuning-trial"])
