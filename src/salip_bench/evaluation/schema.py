"""The on-disk contract of a run: one per-sample record (``samples/<id>.json``, a row of
``results.csv``) and the run's ``summary.json``, as typed dataclasses read and written only here.

The JSON stays flat (as older runs wrote it): a record's scores, confusion counts, work counters and
sample metadata are top-level keys; keys this module does not know (a method's ``info``, a dataset's
extra columns such as HC18's circumference) are kept verbatim in ``extra`` and written back as they
were. A key that is absent and a key that is ``null`` mean different things in both files (an
unlabelled sample has no ``dice``; a labelled one with exactly one empty mask has ``hd95: null``), so
the dataclasses keep that difference: a score is in :attr:`SampleRecord.scores` only when recorded.

Light imports only (json, dataclasses): the report reads these files without torch.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

# Per-image scores against the ground truth: always columns of results.csv, empty when unlabelled.
METRICS = ("dice", "iou", "nsd", "hd95")
# The boundary scores, which may be undefined (HD95 with exactly one empty mask) and are then counted.
BOUNDARY_METRICS = ("nsd", "hd95")
STATISTICS = ("mean", "std", "median")
# Per-volume 3D scores of a volume dataset: Dice / IoU from the summed confusion counts of its slices,
# NSD / HD95 from the NIfTI written on the input grid (only with save_masks).
VOLUME_METRICS = ("dice_3d", "iou_3d", "nsd_3d", "hd95_3d")
CONFUSION = ("tp", "fp", "fn")
# Dice after each SaLIP stage (methods with retrieval record them): the report's failure attribution.
STAGE_DICE = ("oracle_dice", "retrieved_dice")

# Work counters. Per sample (the engines' counter deltas around the sample, summed over every SAM-family
# engine); the summary's ``work`` adds what a process pays once (encoding the class prompts).
SAM_ENCODER_PASSES = "sam_encoder_passes"
CLIP_IMAGES_ENCODED = "clip_images_encoded"
CLIP_TEXTS_ENCODED = "clip_texts_encoded"
EVERYTHING_PASSES = "everything_passes"  # SAM "segment everything" decodings (a cached proposal is none)
PROPAGATION_FRAMES = "propagation_frames"  # slices SAM 2 propagated a mask to (method=salip_propagate)
SAMPLE_COUNTERS = (SAM_ENCODER_PASSES, CLIP_IMAGES_ENCODED, EVERYTHING_PASSES, PROPAGATION_FRAMES)
# Which engine counter (``engine.counters()`` key, see engines/roles.py) each run counter reads.
ENGINE_COUNTER = {SAM_ENCODER_PASSES: "encoder_passes", CLIP_IMAGES_ENCODED: "images_encoded",
                  CLIP_TEXTS_ENCODED: "texts_encoded", EVERYTHING_PASSES: "everything_passes",
                  PROPAGATION_FRAMES: "propagation_frames"}

# Sample metadata copied into its record: grouping keys for per-volume / per-domain summaries, the
# pixel spacing of the boundary metrics, and the dataset's warning about the input.
RECORDED_META = ("volume", "domain", "slice", "image_path", "spacing", "warning", "organ")
# The column order of results.csv; other columns (method info, dataset extras) follow sorted.
RESULT_COLUMNS = ["id", "status", *METRICS, "failure", "warning", "domain", "volume", "organ", "slice", "n_candidates",
                  "n_kept", "retrieved_classes", "retrieved_scores", "retrieved_boxes", "gt_area", "pred_area",
                  "seconds", *SAMPLE_COUNTERS]
# Columns of results.csv that hold integers whatever the method (empty where a sample has none).
INTEGER_COLUMNS = ("slice", "n_candidates", "n_kept", "gt_area", "pred_area", *CONFUSION, *SAMPLE_COUNTERS)
# Written to samples/*.json, never to results.csv (it is the same for every row: summary.json has it).
RECORD_ONLY = ("fingerprint",)

OK, FAILED = "ok", "failed"


@dataclass
class SampleRecord:
    """One evaluated (or failed) sample, as ``samples/<id>.json`` holds it.

    Args:
        id: the dataset's sample id.
        status: ``ok`` or ``failed``.
        fingerprint: hash of the configuration that produced it (resume refuses another one).
        failure: why it failed (``""`` for an ok sample; absent in the crash marker's head).
        meta: the :data:`RECORDED_META` keys the dataset gave the sample.
        seconds: time spent on the method (ok samples).
        gt_area / pred_area: foreground pixels of the ground truth (None: unlabelled) and prediction;
            both present exactly for ok samples.
        scores: the :data:`METRICS` recorded, None where undefined; empty for unlabelled or failed.
        confusion: tp / fp / fn pixel counts (labelled ok samples; volumes sum them for 3D Dice).
        boxes: XYXY boxes the method prompted with (what the figures draw).
        counters: :data:`SAMPLE_COUNTERS` of this sample.
        extra: every other key, verbatim (method info such as ``n_kept`` / ``retrieved_*`` /
            ``oracle_dice``, dataset columns such as ``hc_abs_err_mm``, keys of newer versions).
    """

    id: str
    status: str
    fingerprint: str | None = None
    failure: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    seconds: float | None = None
    gt_area: int | None = None
    pred_area: int | None = None
    scores: dict[str, float | None] = field(default_factory=dict)
    confusion: dict[str, int] = field(default_factory=dict)
    boxes: list[list[float]] | None = None
    counters: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def labelled(self) -> bool:
        """Whether the sample had a ground truth (``gt_area`` is recorded for every ok sample that had one)."""
        return self.gt_area is not None or self.scores.get("dice") is not None

    @property
    def volume(self) -> str | None:
        return self.meta.get("volume")

    @property
    def domain(self) -> str | None:
        return self.meta.get("domain")

    @property
    def warning(self) -> str | None:
        return self.meta.get("warning")

    def undefined(self, metric: str) -> bool:
        """Recorded as undefined (None); records from before NSD / HD95 lack the key: not undefined."""
        return metric in self.scores and self.scores[metric] is None

    def to_dict(self) -> dict[str, Any]:
        """The flat JSON object of ``samples/<id>.json``."""
        out: dict[str, Any] = {**self.extra, **self.meta, **self.scores, **self.confusion, **self.counters,
                               "id": self.id, "status": self.status}
        for key in ("fingerprint", "failure", "seconds", "boxes"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.pred_area is not None:  # a finished sample: gt_area None says it had no ground truth
            out["gt_area"], out["pred_area"] = self.gt_area, self.pred_area
        elif self.gt_area is not None:
            out["gt_area"] = self.gt_area
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SampleRecord:
        """Read a record of this or an older version; unknown keys go to :attr:`extra`."""
        rest = dict(data)
        try:
            record = cls(id=str(rest.pop("id")), status=str(rest.pop("status")))
        except KeyError as err:
            raise ValueError(f"sample record without {err.args[0]!r}: {sorted(data)}") from None
        record.fingerprint = rest.pop("fingerprint", None)
        record.failure = rest.pop("failure", None)
        record.seconds = rest.pop("seconds", None)
        record.gt_area = rest.pop("gt_area", None)
        record.pred_area = rest.pop("pred_area", None)
        record.boxes = rest.pop("boxes", None)
        record.meta = {k: rest.pop(k) for k in RECORDED_META if k in rest}
        record.scores = {k: rest.pop(k) for k in METRICS if k in rest}
        record.confusion = {k: rest.pop(k) for k in CONFUSION if k in rest}
        record.counters = {k: rest.pop(k) for k in SAMPLE_COUNTERS if k in rest}
        record.extra = rest
        return record

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=1)

    @classmethod
    def from_json(cls, text: str) -> SampleRecord:
        return cls.from_dict(json_object(text))


def as_record(record: SampleRecord | dict[str, Any]) -> SampleRecord:
    """``record`` as a :class:`SampleRecord` (a plain dict is read as its JSON would be)."""
    return record if isinstance(record, SampleRecord) else SampleRecord.from_dict(record)


@dataclass
class Stats:
    """Counts and mean / std / median of each score over ok, labelled samples (``summary.json``'s top
    level and each ``per_domain`` entry).

    Args:
        n_total / n_ok / n_failed: samples in scope, finished ok, failed.
        n_unlabelled: ok samples without a ground truth; n_ok_with_warning: ok ones the dataset warned about.
        values: ``<metric>_<statistic>`` of :data:`METRICS` × :data:`STATISTICS` (None: no value).
        n_undefined: per boundary metric, labelled ok samples whose value is undefined.
        volumes: for volume datasets, ``<volume metric>_mean`` (and ``_n_undefined`` at the top level)
            over the scope's volumes, plus ``n_volumes`` in a domain; None otherwise.
    """

    n_total: int = 0
    n_ok: int = 0
    n_failed: int = 0
    n_unlabelled: int = 0
    n_ok_with_warning: int = 0
    values: dict[str, float | None] = field(default_factory=dict)
    n_undefined: dict[str, int] = field(default_factory=dict)
    volumes: dict[str, Any] | None = None

    COUNTS = ("n_total", "n_ok", "n_failed", "n_unlabelled", "n_ok_with_warning")

    def value(self, metric: str, statistic: str = "mean") -> float | None:
        return self.values.get(f"{metric}_{statistic}")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: getattr(self, k) for k in self.COUNTS}
        out.update(self.values)
        out.update({f"{m}_n_undefined": n for m, n in self.n_undefined.items()})
        out.update(self.volumes or {})
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Stats:
        stats = cls(**{k: int(data.get(k) or 0) for k in cls.COUNTS})
        stats.values = {f"{m}_{s}": data[f"{m}_{s}"] for m in METRICS for s in STATISTICS if f"{m}_{s}" in data}
        stats.n_undefined = {m: data[f"{m}_n_undefined"] for m in BOUNDARY_METRICS if f"{m}_n_undefined" in data}
        volume_keys = [f"{m}_{s}" for m in VOLUME_METRICS for s in ("mean", "n_undefined")] + ["n_volumes"]
        volumes = {k: data[k] for k in volume_keys if k in data}
        stats.volumes = volumes or None
        return stats


@dataclass
class VolumeScores:
    """One volume of a volume dataset (``summary.json``'s ``per_volume``).

    Args:
        dice_3d / iou_3d: from the summed confusion counts of its ok slices (None: none labelled).
        n_slices: ok slices with confusion counts; domain: its domain (cc359's scanner) or None.
        written: the NIfTI writer's ``path``, ``n_slices_written``, ``nsd_3d``, ``hd95_3d`` (mm),
            present only when the run saved masks.
        work: :data:`SAMPLE_COUNTERS` summed over its samples (everything passes, CLIP images,
            propagation frames of the volume).
    """

    dice_3d: float | None = None
    iou_3d: float | None = None
    n_slices: int = 0
    domain: str | None = None
    written: dict[str, Any] = field(default_factory=dict)
    work: dict[str, int] = field(default_factory=dict)

    def value(self, metric: str) -> float | None:
        return getattr(self, metric) if metric in ("dice_3d", "iou_3d") else self.written.get(metric)

    def undefined(self, metric: str) -> bool:
        """A scored volume whose ``metric`` was computed and undefined (one empty mask)."""
        return self.dice_3d is not None and metric in self.written and self.written[metric] is None

    def to_dict(self) -> dict[str, Any]:
        return {**self.written, "dice_3d": self.dice_3d, "iou_3d": self.iou_3d, "n_slices": self.n_slices,
                "domain": self.domain, "work": self.work}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VolumeScores:
        known = ("dice_3d", "iou_3d", "n_slices", "domain", "work")
        return cls(data.get("dice_3d"), data.get("iou_3d"), int(data.get("n_slices") or 0), data.get("domain"),
                   {k: v for k, v in data.items() if k not in known}, dict(data.get("work") or {}))


# Summary keys that describe the last invocation that evaluated samples (the engines it built, their
# identities and counters, the class prompts it encoded). An invocation that finds every sample done
# builds no engine, so these exist only in the previous summary.json: finalize carries exactly these
# over (see :func:`salip_bench.evaluation.summary.carried_over`), and nothing else.
FROM_LAST_EVALUATING_RUN = ("weights_identity", "engines", "stage_engines", f"work.{CLIP_TEXTS_ENCODED}")


@dataclass
class Summary:
    """``summary.json``: the aggregates over the records and what produced them.

    Args:
        stats: the top-level :class:`Stats` over every sample.
        per_domain: :class:`Stats` per domain (datasets with domains), or None.
        per_volume: :class:`VolumeScores` per volume (volume datasets), or None.
        dataset / method / dataset_root / roi: what ran (roi: the dataset's prompt set).
        overrides: the Hydra command-line overrides (report labels for runs without a config).
        conventions: empty-mask and boundary conventions, NSD tolerance, spacing unit and source.
        fingerprint: the configuration hash of every record.
        work: :data:`SAMPLE_COUNTERS` and ``CLIP_TEXTS_ENCODED`` over the run.
        weights / weights_identity / engines / stage_engines: the weights and engines used
            (see :data:`FROM_LAST_EVALUATING_RUN`).
        versions: package versions; config: the resolved configuration.
        extra: keys this version does not know, kept verbatim.
    """

    stats: Stats = field(default_factory=Stats)
    per_domain: dict[str, Stats] | None = None
    per_volume: dict[str, VolumeScores] | None = None
    dataset: str | None = None
    method: str | None = None
    dataset_root: str | None = None
    roi: str | None = None
    overrides: list[str] = field(default_factory=list)
    conventions: dict[str, Any] = field(default_factory=dict)
    fingerprint: str | None = None
    work: dict[str, int] = field(default_factory=dict)
    weights: str | None = None
    weights_identity: dict[str, Any] = field(default_factory=dict)
    engines: dict[str, Any] = field(default_factory=dict)
    stage_engines: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    RUN_KEYS = ("dataset", "method", "dataset_root", "roi", "overrides", "fingerprint", "work", "weights",
                "weights_identity", "engines", "stage_engines", "versions", "config")
    CONVENTION_KEYS = ("empty_mask_convention", "boundary_conventions", "nsd_tolerance", "spacing_unit",
                       "spacing_source")

    @property
    def scored(self) -> bool:
        """False for a run on unlabelled images: it has predictions but no Dice to report."""
        dice_3d = (self.stats.volumes or {}).get("dice_3d_mean")
        return not (self.stats.value("dice") is None and dice_3d is None and self.stats.n_unlabelled > 0)

    @property
    def spacing_unit(self) -> str | None:
        return self.conventions.get("spacing_unit")

    @property
    def nsd_tolerance(self) -> float:
        return float(self.conventions.get("nsd_tolerance", 2.0))

    @property
    def dataset_config(self) -> dict[str, Any]:
        return dict(self.config.get("dataset") or {})

    def aggregates_dict(self) -> dict[str, Any]:
        """The aggregate keys only: top-level stats, ``per_volume``, ``per_domain``."""
        out: dict[str, Any] = self.stats.to_dict()
        if self.per_volume is not None:
            out["per_volume"] = {k: v.to_dict() for k, v in self.per_volume.items()}
        if self.per_domain is not None:
            out["per_domain"] = {k: v.to_dict() for k, v in self.per_domain.items()}
        return out

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {**self.extra, **self.aggregates_dict()}
        out.update({k: getattr(self, k) for k in self.RUN_KEYS})
        out.update(self.conventions)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Summary:
        """Read a summary of this or an older version (missing keys take their defaults)."""
        summary = cls(stats=Stats.from_dict(data))
        if isinstance(data.get("per_domain"), dict):
            summary.per_domain = {str(k): Stats.from_dict(v) for k, v in data["per_domain"].items()}
        if isinstance(data.get("per_volume"), dict):
            summary.per_volume = {str(k): VolumeScores.from_dict(v) for k, v in data["per_volume"].items()}
        for key in cls.RUN_KEYS:
            if data.get(key) is not None:
                setattr(summary, key, data[key])
        summary.conventions = {k: data[k] for k in cls.CONVENTION_KEYS if k in data}
        known = {*cls.RUN_KEYS, *cls.CONVENTION_KEYS, "per_domain", "per_volume",
                 *Stats.from_dict(data).to_dict()}
        summary.extra = {k: v for k, v in data.items() if k not in known}
        return summary

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str)

    @classmethod
    def from_json(cls, text: str) -> Summary:
        return cls.from_dict(json_object(text))


def json_object(text: str) -> dict[str, Any]:
    """``text`` parsed; a ValueError unless it is a JSON object (records and summaries are)."""
    data = json.loads(text)
    if not isinstance(data, dict):  # a ValueError like a JSON syntax error: callers catch one kind
        raise ValueError("not a JSON object")
    return data
