"""The per-stage engine wiring of a run: what plugins may ask for by parameter name, and which engine
each stage ended up using (the per-engine report of ``summary.json``)."""
from __future__ import annotations

from salip_bench.datasets.predictions import PredictionReader
from salip_bench.datasets.settings import DatasetSettings
from salip_bench.engines import builder
from salip_bench.engines.box_memo import BoxMemoStore
from salip_bench.registry import FILTERS, GENERATORS, REFINERS, RETRIEVERS, Lazy
from salip_bench.storage.feature_cache import FeatureCache

# The context keys holding engines, in the order the run registers them with Lightning.
ENGINE_KEYS = ("sam", "refiner_sam", "propagator_sam", "clip")
STAGE_ENGINES = {"generator": "sam", "retriever": "clip", "refiner": "refiner_sam"}  # stage -> context key


def build_context(cfg: dict, dataset, sam=None, clip=None, refiner_sam=None,
                  box_memo: BoxMemoStore | None = None) -> dict[str, Lazy]:
    """Everything a method or stage plugin may ask for by parameter name, built on first use
    (``sam`` / ``clip`` / ``refiner_sam``: already-built engines to use instead, e.g. in tests).

    ``sam`` is the engine of ``cfg["model"]``; ``refiner_sam`` that of ``cfg["refiner_model"]``
    (``model@refiner_model=NAME``) or, when that is unset or the same entry, the very same object,
    so the refiner reuses the generator's embeddings exactly when the two share an engine. The
    refiner stage receives ``refiner_sam`` as its ``sam``. Order matters only for error order: SAM
    (and so a missing checkpoint) comes first.

    Args:
        cfg: the resolved run config.
        dataset: the built dataset: its ``organ_names`` (``dataset.organs``) are the classes to retrieve
            when set; otherwise what to retrieve comes from the config.
        sam, clip, refiner_sam: already-built engines to use instead of building them.
        box_memo: where the refiner's box prompts are memoised (tuning's trials share one), or None.
    """
    def refiner_engine():
        if refiner_sam is not None:
            engine = refiner_sam
        elif not cfg.get("refiner_model") or cfg["refiner_model"] == cfg["model"]:
            engine = models["sam"]()
        else:
            engine = build_engine(cfg, "refiner_model")
        return box_memo.around(engine) if box_memo is not None else engine

    def propagator_engine():  # noqa: ANN202 - like the refiner's: the model's own engine unless another is chosen
        if not cfg.get("propagator_model") or cfg["propagator_model"] == cfg["model"]:
            return models["sam"]()
        return build_engine(cfg, "propagator_model")

    settings = DatasetSettings.from_config(cfg["dataset"])  # what to retrieve: the config's, or the dataset's organs
    organs = getattr(dataset, "organ_names", None)
    # build_engine reuses: the jobs of a multirun share each engine and CLIP instead of reloading them.
    models = {"sam": Lazy(lambda: sam or build_engine(cfg, "model")),
              "refiner_sam": Lazy(refiner_engine),
              "propagator_sam": Lazy(propagator_engine),
              "clip": Lazy(lambda: clip or build_engine(cfg, "clip")),
              # method=salip_propagate: every slice of a sample's volume (volume datasets only)
              "volume_frames": Lazy(lambda: getattr(dataset, "volume_frames", None)),
              "run_organs": Lazy(lambda: organs),  # ... and the organs it computes a volume for at once
              "class_prompts": Lazy(lambda: settings.class_prompts(organs)),
              "top_k": Lazy(lambda: settings.top_k_per_class(organs)),
              # method=precomputed: another tool's predictions, read by the dataset layer's rules
              "read_prediction": Lazy(lambda: PredictionReader(cfg["method"]["dir"], cfg["method"].get("labels"),
                                                               cfg["method"].get("pattern")))}
    stages = {"generator": Lazy(lambda: GENERATORS.build(cfg["generator"], **models)),
              "filter": Lazy(lambda: FILTERS.build(cfg["filter"], **models)),
              "retriever": Lazy(lambda: RETRIEVERS.build(cfg["retriever"], **models)),
              "refiner": Lazy(lambda: REFINERS.build(cfg["refiner"], **{**models, "sam": models["refiner_sam"]}))}
    return {**stages, **models}


def build_engine(cfg: dict, key: str):
    """The engine of the entry ``cfg[key]`` through :func:`~salip_bench.engines.builder.build_engine`,
    with the run's weights and disk cache; the previous multirun job's engine when it came from the
    same entry.

    Args:
        cfg: the resolved run config.
        key: ``model``, ``refiner_model``, ``propagator_model`` or ``clip``.
    """
    return builder.build_engine(cfg[key], cfg["weights"], key, FeatureCache.from_config(cfg.get("cache")), reuse=True)


def built_engines(context: dict[str, Lazy]) -> dict:
    """The engines that building the method (and its stages) asked for, by context key.

    Args:
        context: the run's :func:`build_context`, after the method was built.
    """
    return {key: context[key]() for key in ENGINE_KEYS if context[key].built}


def stage_engines(context: dict[str, Lazy]) -> dict[str, str]:
    """Which context engine each built stage used (``method`` for one the method itself asked for).

    Args:
        context: the run's :func:`build_context`, after the method was built.
    """
    used = {stage: key for stage, key in STAGE_ENGINES.items() if context[stage].built}
    for key in ("sam", "clip"):
        if context[key].built and key not in used.values():
            used.setdefault("method", key)
    return used


def engine_report(cfg: dict, engines: dict, stages: dict[str, str]) -> tuple[dict, dict]:
    """Per engine (by model name): its registered engine, identity, counters and stages; and stage -> name.

    Args:
        cfg: the resolved run config.
        engines: the built engines by context key (:func:`built_engines`).
        stages: which context key each stage used (:func:`stage_engines`).
    """
    entries = {"sam": cfg.get("model"), "refiner_sam": cfg.get("refiner_model") or cfg.get("model"),
               "propagator_sam": cfg.get("propagator_model") or cfg.get("model"), "clip": cfg.get("clip")}
    names: dict[int, str] = {}
    report: dict[str, dict] = {}
    for key, engine in engines.items():
        if id(engine) in names:
            continue
        name = str(engine.identity.get("model", key))
        name = name if name not in report else f"{name}@{key}"
        names[id(engine)] = name
        registered = (entries.get(key) or {}).get("engine", "open_clip" if key == "clip" else "sam")
        report[name] = {"engine": registered, "identity": engine.identity, "counters": engine.counters(),
                        "stages": []}
    by_stage = {stage: names[id(engines[key])] for stage, key in stages.items() if key in engines}
    for stage, name in by_stage.items():
        report[name]["stages"].append(stage)
    return report, by_stage
