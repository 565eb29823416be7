"""``salip-bench-tune``: SaLIP's test-time tuning, a seeded random search over the generator's settings
and the area threshold, scored by mean Dice on a small labelled split.

::

    salip-bench-tune dataset=hc18 dataset.root=/data/HC18 tune.split.root=/data/HC18_tuning output_dir=runs/tune
    salip-bench dataset=hc18 dataset.root=/data/HC18 tuned=runs/tune/tuned.yaml output_dir=runs/hc18_tuned

Each trial is an ordinary evaluation run on the first ``tune.n_images`` images of ``tune.split`` into
``OUT/trials/<n>/``. With ``tune.reuse`` (the default) the trials are evaluated image by image
(``tune_trials.run_trials``): each image is encoded, and decoded once per point grid, for all of
them, and CLIP embeds each visual prompt once; the results are those of one ``harness.run`` per
trial (``tune.reuse=false``, also used when a trial changes anything but the stage groups).
Trial 0 is the configured values (with ``tune.baseline``), so tuning never picks something that
scored worse on the split than not tuning. The best mean Dice wins (the earliest trial on a tie);
``OUT/tuned.yaml`` holds its values and ``OUT/trials.csv`` every
trial. The same ``tune.seed`` draws the same trials (numpy's seeded Generator, never the clock).

Why a stage of its own rather than a Hydra sweeper (``-m`` with the basic or the Optuna sweeper):

- the trials run on a *different* dataset (the tuning split) than the one the values are for, and
  the two must be proven disjoint before any compute is spent; a sweeper optimises its jobs' own
  config, so the split would have to pose as the evaluation dataset and nothing would stop anyone
  tuning on the test images;
- the product is a file that later evaluation runs consume (``tuned=``), carrying the split's
  identity so that the disjointness check repeats there; a sweeper leaves only its best overrides;
- random search needs nothing beyond numpy, while ``hydra-optuna-sweeper`` (1.3.0, the current
  release) pins ``optuna<3``: an old dependency tree for no gain at a few dozen trials.

The trials are still plain runs: resumable, and ``salip-bench-report OUT/trials`` tabulates them.
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pandas as pd
import yaml
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from salip_bench.engines.weights import WeightsNotFoundError
from salip_bench.evaluation.console import quiet_console
from salip_bench.evaluation.entry_checks import one_line_exits, precheck
from salip_bench.evaluation.interrupts import stop_on_signals
from salip_bench.evaluation.job import Job
from salip_bench.evaluation.run_lock import RunLock, RunLockedError
from salip_bench.evaluation.tune_objective import (
    ABSTAIN_KEY,
    check_objective,
    choose_abstention,
    labels_used,
    objective_column,
    trial_scores,
)
from salip_bench.evaluation.tuned import TUNED_FILE, TuningError, check_disjoint, get_dotted, resolved_root, set_dotted
from salip_bench.evaluation.validation import ConfigError, check_dataset, check_method_inputs, validate
from salip_bench.registry import DATASETS, METHODS, PluginError
from salip_bench.storage.files import atomic_write_text

log = logging.getLogger("salip_bench")


def flatten_space(space: Mapping, prefix: str = "") -> dict[str, Any]:
    """``tune.space`` as {dotted key: spec}; nested mappings and dotted keys alike. A spec is a list
    or ``{choices: [...]}`` (a mapping with only that key), anything else nests further."""
    flat: dict[str, Any] = {}
    for key, value in space.items():
        if isinstance(value, Mapping) and set(value) != {"choices"}:
            flat.update(flatten_space(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _is_int(value: Any) -> bool:
    return type(value) is int  # bool is an int subclass, but true/false are choices, not a range


def draw(rng: np.random.Generator, key: str, spec: Any) -> Any:
    """One value for ``key``: ``[low, high]`` of two ints → integer in [low, high]; of numbers with a
    float → uniform float in [low, high] (rounded to 4 decimals, readable in tables); any other list,
    or ``{choices: [...]}``, → one of its items."""
    choices = spec["choices"] if isinstance(spec, Mapping) else spec
    if not isinstance(choices, list) or not choices:
        raise TuningError(f"tune.space.{key}: expected [low, high], a list of choices or {{choices: [...]}}, "
                          f"got {spec!r}")
    if isinstance(spec, Mapping):  # explicit choices: [16, 32] means 16 or 32, not the integers between
        return choices[int(rng.integers(len(choices)))]
    numbers = all(_is_int(v) or isinstance(v, float) for v in spec)
    if len(spec) == 2 and numbers and spec[0] > spec[1]:
        raise TuningError(f"tune.space.{key}: low {spec[0]} > high {spec[1]}")
    if len(spec) == 2 and all(_is_int(v) for v in spec):
        return int(rng.integers(spec[0], spec[1], endpoint=True))
    if len(spec) == 2 and numbers:
        return round(float(rng.uniform(spec[0], spec[1])), 4)
    return spec[int(rng.integers(len(spec)))]


def sample_trials(space: Mapping, n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` parameter sets drawn from ``space`` by a Generator seeded with ``seed``; keys in sorted
    order, so that the draws do not depend on the order the keys were written or overridden in."""
    flat = flatten_space(space)
    rng = np.random.default_rng(seed)
    return [{key: draw(rng, key, flat[key]) for key in sorted(flat)} for _ in range(n)]


def split_config(cfg: Mapping) -> dict:
    """The tuning split's dataset config, checked to be labelled data other than the evaluated images."""
    split = dict(cfg["tune"]["split"])
    if resolved_root(split.get("root")) is None:
        raise TuningError("tune.split.root is required: a labelled dataset that is not evaluated, e.g. "
                          "tune.split.root=../shared/data/us_fetal_head_train")
    return split


def trial_config(cfg: Mapping, split: dict, params: Mapping[str, Any], out_dir: Path) -> dict:
    """The evaluation config with the split as its dataset, ``n_images`` of it, and ``params`` set."""
    trial = copy.deepcopy({k: v for k, v in cfg.items() if k != "tune"})
    trial.update(dataset=copy.deepcopy(split), limit=cfg["tune"]["n_images"], output_dir=str(out_dir))
    for key, value in params.items():
        set_dotted(trial, key, value)
    return trial


def tune(cfg: DictConfig | dict, out_dir: Path | str, job: Job | None = None) -> dict:
    """Run the search into ``out_dir``; returns what ``tuned.yaml`` holds.

    Args:
        cfg: the tuning config (``conf/tune.yaml``: an evaluation config plus ``tune``).
        out_dir: where the trials, ``trials.csv`` and ``tuned.yaml`` go.
        job: the launching command, read from Hydra by the entry point (None: a library call).
    """
    cfg = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else copy.deepcopy(cfg)
    settings, out_dir = cfg["tune"], Path(out_dir)
    check_objective(settings)  # dice | quality (evaluation/tune_objective.py)
    if cfg.get("tuned"):
        raise TuningError("tuned= applies earlier tuning to an evaluation run; salip-bench-tune starts from the "
                          "configured values (set them directly to start elsewhere)")
    if settings["n_trials"] < 1 or settings["n_images"] < 1:
        raise TuningError("tune.n_trials and tune.n_images must be >= 1")
    space = flatten_space(settings["space"])
    if not space:
        raise TuningError("tune.space is empty: nothing to tune")
    baseline = {key: get_dotted(cfg, key) for key in sorted(space)}  # also: every key exists
    split = split_config(cfg)
    if resolved_root(cfg["dataset"].get("root")) is None:
        raise TuningError("dataset.root is required: the dataset the tuned values are for, which the split "
                          "is checked against")
    split_data = DATASETS.build(split)
    if not getattr(split_data, "labelled", True) and labels_used(settings):  # quality needs no masks
        raise TuningError(f"tune.split ({split.get('root')}) has no masks (tune.split.mask_dir is null): "
                          "tuning chooses by Dice (and tune.abstain chooses tau by Dice), so it needs labelled "
                          "images; tune.objective=quality tunes without masks")
    split_ids = split_data.ids[: settings["n_images"]]
    if not split_ids:
        raise TuningError(f"tune.split ({split.get('root')}) has no images")
    check_disjoint(split.get("root"), split_ids, cfg["dataset"].get("root"), DATASETS.build(cfg["dataset"]).ids)

    with RunLock(out_dir), stop_on_signals():  # one tuning per folder; a stop signal ends it cleanly
        return search(cfg, split, split_ids, space, baseline, out_dir, job)


def search(cfg: dict, split: dict, split_ids: list[str], space: dict[str, Any], baseline: dict[str, Any],
           out_dir: Path, job: Job | None) -> dict:
    """Run the trials and write ``trials.csv`` and ``tuned.yaml`` (see :func:`tune`).

    Args:
        cfg: the resolved tuning config; split: its split's dataset config, split_ids its images.
        space: the flattened search space; baseline: the configured values of its keys.
        out_dir: the tuning's folder; job: the launching command.
    """
    from salip_bench.evaluation.harness import run  # torch and Lightning only once the config is known to be good
    from salip_bench.evaluation.tune_trials import run_trials, share_engines

    settings = cfg["tune"]
    objective = check_objective(settings)
    n_drawn = settings["n_trials"] - 1 if settings["baseline"] else settings["n_trials"]
    trials = ([baseline] if settings["baseline"] else []) + sample_trials(space, n_drawn, settings["seed"])
    trial_dirs = [out_dir / "trials" / str(number) for number in range(len(trials))]
    configs = [trial_config(cfg, split, params, d) for params, d in zip(trials, trial_dirs)]
    for number, params in enumerate(trials):
        log.info("trial %d/%d: %s", number + 1, len(trials), params)
    if settings.get("reuse", True) and share_engines(configs):
        summaries = run_trials(configs, trial_dirs, job)  # image by image: each image and grid decoded once
    else:  # a trial changes the models or the data: one ordinary run each
        summaries = [run(c, d, job) for c, d in zip(configs, trial_dirs)]
    rows = [{"trial": number, **trial_scores(summary), "iou_mean": summary.get("iou_mean"),  # + quality_mean
             "n_ok": summary.get("n_ok"), "n_failed": summary.get("n_failed"), **params}
            for number, (params, summary) in enumerate(zip(trials, summaries))]
    frame = pd.DataFrame(rows)
    scores = objective_column(objective, frame, cfg["method"]["name"])  # all samples failed: worst
    best = int(scores.to_numpy().argmax())  # first maximum: the earliest trial wins a tie
    frame["chosen"] = frame["trial"] == best
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "trials.csv", frame.to_csv(index=False))
    params = dict(trials[best])
    abstention = choose_abstention(trial_dirs[best] / "results.csv") if settings.get("abstain") else None
    if abstention is not None:
        params[ABSTAIN_KEY] = abstention["abstain_below"]
    tuned = {"params": params,
             "score": {"dice_mean": rows[best]["dice_mean"], "trial": best, "n_trials": len(trials),
                       "objective": objective, "quality_mean": rows[best]["quality_mean"],
                       "labels_used": labels_used(settings), **({"abstention": abstention} if abstention else {})},
             "seed": settings["seed"],
             "split": {"name": split.get("name"), "root": resolved_root(split.get("root")),
                       "n_images": len(split_ids), "ids": list(split_ids)}}
    header = ("# Written by salip-bench-tune: apply with `salip-bench tuned=THIS_FILE ...` (the evaluation "
              "dataset must not share images with split).\n")
    atomic_write_text(out_dir / TUNED_FILE, header + yaml.safe_dump(tuned, sort_keys=False))
    log.info("chosen by %s: trial %d, dice_mean=%s quality_mean=%s on %d tuning images: %s -> %s", objective, best,
             rows[best]["dice_mean"], rows[best]["quality_mean"], len(split_ids), params, out_dir / TUNED_FILE)
    return tuned


def check_tune_config(cfg: DictConfig | Mapping) -> None:
    """The evaluation settings as ``salip-bench`` checks them, and ``tune.split`` as a dataset.

    Args:
        cfg: the tuning config.

    Raises:
        ConfigError: the first bad setting, in one line (the split's keys named ``tune.split.*``).
    """
    plain = validate(cfg)
    check_method_inputs(METHODS.get(plain["method"]["name"]), plain["dataset"])
    settings = plain.get("tune")
    if not isinstance(settings, Mapping) or not isinstance(settings.get("split"), Mapping):
        raise ConfigError(f"tune={settings!r}: expected a mapping with split, space, n_trials, n_images, seed")
    for key, low in (("n_trials", 1), ("n_images", 1), ("seed", 0)):
        value = settings.get(key)
        if type(value) is not int or value < low:
            raise ConfigError(f"tune.{key}={value!r}: expected an integer >= {low}")
    for key in ("baseline", "reuse"):
        if not isinstance(settings.get(key, True), bool):
            raise ConfigError(f"tune.{key}={settings.get(key)!r}: expected true or false")
    if not isinstance(settings.get("space"), Mapping):
        raise ConfigError(f"tune.space={settings.get('space')!r}: expected a mapping of dotted keys to [low, high] "
                          "or choices, e.g. tune.space.filter.max_area=[0.5,0.95]")
    try:
        check_dataset(settings["split"], needs_prompts=True)
    except ConfigError as err:
        message = str(err)
        raise ConfigError("tune.split." + message.removeprefix("dataset.")
                          if message.startswith("dataset.") else message) from None


@hydra.main(version_base="1.3", config_path=str(Path(__file__).resolve().parent / "conf"), config_name="tune")
def _main(cfg: DictConfig) -> float | None:
    out_dir = HydraConfig.get().runtime.output_dir  # Hydra is read here and in Job.from_hydra, never below
    with one_line_exits(out_dir, (TuningError, WeightsNotFoundError, PluginError, ConfigError, RunLockedError)):
        check_tune_config(cfg)  # before any model loads
        quiet_console()
        tuned = tune(cfg, out_dir, Job.from_hydra())
    return tuned["score"]["dice_mean"]


def main() -> None:
    precheck("tune")  # overrides that do not compose, an unusable output_dir: one line, exit 2
    _main()


if __name__ == "__main__":
    main()
