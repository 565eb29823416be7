"""Which config keys change predictions. One rule for the resume fingerprint (harness) and for the
report, which tells runs apart by the keys that do (a light module: the report needs no torch)."""
from __future__ import annotations

# Top-level keys that change no prediction: out of the fingerprint and of the report's run labels.
NON_SEMANTIC_KEYS = ("output_dir", "resume", "fail_fast", "limit", "num_workers", "save_masks", "trainer", "logger",
                     "cache", "memory_limit_gb")
NON_SEMANTIC_NESTED = ("retriever.workers",  # threads building visual prompts
                       "dataset.extra_metrics",  # extra result columns: computed from predictions, never change them
                       "qc.failure_dice")  # what the summary counts as a failure of the quality score
# Inside a non-semantic group but changing predictions: bf16 autocast (trainer.precision=bf16-mixed).
SEMANTIC_NESTED = ("trainer.precision",)
FULL_PRECISION = ("32-true", "32", "64-true", "64")  # trainer.precision values that use no autocast


def changes_predictions(key: str) -> bool:
    """Whether the dotted config key (``retriever.name``, ``trainer.precision``) can change a
    prediction: the one rule behind the resume fingerprint (:func:`semantic_config`) and the
    report's run labels.

    Args:
        key: a dotted path into the resolved run config.
    """
    if key in SEMANTIC_NESTED:
        return True
    return key.split(".")[0] not in NON_SEMANTIC_KEYS and key not in NON_SEMANTIC_NESTED


def semantic_config(cfg: dict) -> dict:
    """The part of a resolved run config that changes predictions, in the shape the resume
    fingerprint hashes (kept so that fingerprints of existing runs stay valid).

    Args:
        cfg: the resolved run config.
    """
    semantic = {k: v for k, v in cfg.items() if changes_predictions(k)}
    if isinstance(semantic.get("dataset"), dict) and semantic["dataset"].get("max_side", 0) is None:
        # max_side=null (the default) changes nothing: runs from before the key existed still resume.
        semantic["dataset"] = {k: v for k, v in semantic["dataset"].items() if k != "max_side"}
    for group, key in (dotted.split(".", 1) for dotted in NON_SEMANTIC_NESTED):
        if isinstance(semantic.get(group), dict):
            semantic[group] = {k: v for k, v in semantic[group].items() if k != key}
    # the defaults of issue 22's keys change nothing, so runs from before them still resume.
    if isinstance(semantic.get("retriever"), dict):
        semantic["retriever"] = {k: v for k, v in semantic["retriever"].items()
                                 if not (k == "dedup_iou" and v is None) and not (k == "exclusive" and v is False)}
    if semantic.get("qc") == {"name": "auto", "abstain_below": None}:
        del semantic["qc"]
    precision = str((cfg.get("trainer") or {}).get("precision", "32-true"))
    if precision not in FULL_PRECISION:  # bf16 autocast changes predictions (slightly): another configuration
        semantic["precision"] = precision
    return semantic
