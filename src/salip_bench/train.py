"""``salip-bench-train``: train the supervised U-Net baseline (Hydra app, primary config ``conf/train.yaml``).

    salip-bench-train dataset=folder dataset.root=DIR output_dir=TRAIN

writes ``TRAIN/unet.ckpt`` (the weights of the epoch with the best Dice on a seeded validation split
of DIR) and ``TRAIN/train_summary.json``; evaluate it with
``salip-bench method=unet method.checkpoint=TRAIN/unet.ckpt dataset=... output_dir=OUT``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
import warnings
from functools import partial
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from salip_bench.datasets.base import SegmentationDataset
from salip_bench.evaluation.console import quiet_console
from salip_bench.evaluation.entry_checks import one_line_exits, precheck
from salip_bench.registry import PluginError
from salip_bench.storage.files import atomic_write_text

log = logging.getLogger("salip_bench")


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded (train, validation) split of ``range(n)``; validation gets round(n * val_fraction) items."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = min(round(n * val_fraction), n - 1)
    return sorted(order[n_val:]), sorted(order[:n_val])


def preload(dataset: SegmentationDataset, indices: list[int], size: int) -> tuple[TensorDataset | None, list[str]]:
    """Read and resize the samples once: every epoch then reuses (N, 3, size, size) tensors in memory."""
    from salip_bench.engines.unet import resize_image, resize_mask

    images, masks, ids = [], [], []
    for index in indices:
        sample = dataset[index]
        if sample.error or sample.mask is None:
            log.warning("skipping sample %s: %s", sample.id, sample.error or "no ground-truth mask")
            continue
        images.append(resize_image(sample.image, size))
        masks.append(resize_mask(sample.mask, size))
        ids.append(sample.id)
    if not images:
        return None, ids
    return TensorDataset(torch.stack(images), torch.stack(masks)), ids


RESUME_FILE = "last.ckpt"  # the state after the last finished epoch: a stopped training resumes from it


def training_fingerprint(cfg: dict) -> str:
    """A hash of what the training depends on (data, U-Net settings, trainer), so that a checkpoint of
    other settings is never resumed from.

    Args:
        cfg: the resolved training config.
    """
    relevant = {k: cfg.get(k) for k in ("dataset", "unet", "trainer")}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


def resume_callback(fingerprint: str):  # a lightning Callback
    """A Lightning callback that puts into every checkpoint what Lightning's own does not hold: the
    module's best epoch so far (state, Dice, epoch) and the random generators' states, so that a resumed
    training draws the same shuffles and augmentations as an uninterrupted one (same weights, same
    best epoch).

    Args:
        fingerprint: :func:`training_fingerprint` of the settings, stored with the state.
    """
    import random

    import numpy as np
    from lightning.pytorch.callbacks import Callback

    class ResumeState(Callback):  # plain values and tensors only: Lightning loads it with weights_only
        def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
            numpy_state = np.random.get_state(legacy=False)
            version, internal, gauss = random.getstate()
            checkpoint["salip_bench"] = {
                "fingerprint": fingerprint, "best_dice": pl_module.best_dice, "best_epoch": pl_module.best_epoch,
                "best_state": pl_module.best_state, "torch_rng": torch.get_rng_state(),
                "numpy_rng": {"key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
                              "pos": int(numpy_state["state"]["pos"]), "has_gauss": int(numpy_state["has_gauss"]),
                              "gauss": float(numpy_state["gauss"])},
                "python_rng": [version, list(internal), gauss]}

        def on_load_checkpoint(self, trainer, pl_module, checkpoint) -> None:
            state = checkpoint["salip_bench"]  # resume_path checked that it is of these settings
            pl_module.best_dice, pl_module.best_epoch = state["best_dice"], state["best_epoch"]
            pl_module.best_state = state["best_state"]
            torch.set_rng_state(state["torch_rng"])
            saved = state["numpy_rng"]
            np.random.set_state({"bit_generator": "MT19937", "has_gauss": saved["has_gauss"], "gauss": saved["gauss"],
                                 "state": {"key": saved["key"].numpy().astype(np.uint32), "pos": saved["pos"]}})
            version, internal, gauss = state["python_rng"]
            random.setstate((version, tuple(internal), gauss))

    return ResumeState()


def resume_path(out_dir: Path, fingerprint: str) -> Path | None:
    """The checkpoint to resume from, if there is one of these settings (another is set aside, named).

    Args:
        out_dir: the training's folder; fingerprint: :func:`training_fingerprint`.
    """
    path = out_dir / RESUME_FILE
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True).get("salip_bench") or {}
    except Exception as err:  # a truncated or foreign file: start over, saying so
        log.warning("%s is unreadable (%s): training from the start", path, err)
        return None
    if state.get("fingerprint") != fingerprint:
        log.warning("%s was written with other settings: training from the start", path)
        return None
    return path


def train(cfg: DictConfig | dict, out_dir: Path | str) -> dict:
    """Train on ``cfg.dataset`` with the ``cfg.unet`` settings into ``out_dir``; returns the summary dict."""
    import lightning as L  # heavy imports after argument parsing: --help stays fast

    from salip_bench.engines.unet import ARCH_KEYS, UNetModule, save_checkpoint
    from salip_bench.evaluation.harness import build_dataset
    from salip_bench.evaluation.validation import ConfigError

    begin = time.perf_counter()
    # to_container leaves a missing value (dataset.prompts: ???) as the string "???" instead of raising.
    cfg = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    hp, out_dir = cfg["unet"], Path(out_dir)
    if hp.get("threads"):
        torch.set_num_threads(hp["threads"])
    L.seed_everything(hp["seed"], verbose=False)
    # Prompts only matter to zero-shot retrieval; training must not require them.
    dataset = build_dataset({k: v for k, v in cfg["dataset"].items() if k != "prompts"})
    train_indices, val_indices = split_indices(len(dataset), hp["val_fraction"], hp["seed"])
    start = time.perf_counter()
    train_set, train_ids = preload(dataset, train_indices, hp["image_size"])
    val_set, val_ids = preload(dataset, val_indices, hp["image_size"])
    if train_set is None:
        raise ConfigError(f"no usable training sample in {cfg['dataset'].get('root')}")
    log.info("%d training / %d validation images at %d px, loaded in %.1fs", len(train_ids), len(val_ids),
             hp["image_size"], time.perf_counter() - start)

    arch = {k: hp[k] for k in ARCH_KEYS}
    module = UNetModule(arch, lr=hp["lr"], weight_decay=hp["weight_decay"], augment=hp["augment"])
    loader = partial(DataLoader, batch_size=hp["batch_size"], num_workers=hp["num_workers"])
    # Every finished epoch leaves OUT/last.ckpt (with the random generators' states): a stopped or killed
    # training run again with the same command resumes from it, to the same weights as an uninterrupted one.
    fingerprint = training_fingerprint(cfg)
    from lightning.pytorch.callbacks import ModelCheckpoint

    every_epoch = ModelCheckpoint(dirpath=out_dir, filename=Path(RESUME_FILE).stem, save_top_k=1,  # the latest
                                  enable_version_counter=False, every_n_epochs=1)
    resume = resume_path(out_dir, fingerprint)
    if resume is not None:
        log.info("resuming from %s", resume)
    trainer = L.Trainer(**cfg["trainer"], max_epochs=hp["epochs"], logger=False, enable_checkpointing=True,
                        callbacks=[every_epoch, resume_callback(fingerprint)], num_sanity_val_steps=0)
    with warnings.catch_warnings():  # the data is already in memory: workers would only add copies
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        start, cpu_start = time.perf_counter(), time.process_time()
        trainer.fit(module, loader(train_set, shuffle=True), loader(val_set) if val_set is not None else None,
                    ckpt_path=str(resume) if resume is not None else None)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start

    # Without a validation split the last epoch's weights are kept.
    state = module.best_state if module.best_state is not None else module.net.state_dict()
    summary = {"epochs": hp["epochs"], "epochs_run": trainer.current_epoch, "seconds": round(seconds, 1),
               "cpu_seconds": round(cpu_seconds, 1),  # wall time varies with other jobs on a shared machine
               "total_seconds": round(time.perf_counter() - begin, 1),  # with data loading
               "best_val_dice": module.best_dice, "best_epoch": module.best_epoch,
               "n_train": len(train_ids), "n_val": len(val_ids), "val_ids": val_ids,
               "dataset_root": cfg["dataset"].get("root"), "torch_threads": torch.get_num_threads(),
               "checkpoint": str(out_dir / "unet.ckpt"), "unet": hp}
    save_checkpoint(out_dir / "unet.ckpt", state, arch, hp["image_size"],
                    info={"best_val_dice": module.best_dice, "train_ids": train_ids, "val_ids": val_ids})
    atomic_write_text(out_dir / "train_summary.json", json.dumps(summary, indent=2, sort_keys=True))
    log.info("%.0fs, best val Dice %s (epoch %s) -> %s", seconds, module.best_dice, summary["best_epoch"],
             out_dir / "unet.ckpt")
    return summary


# unet.<key>: (type, lowest value, whether the lowest is allowed) of the training settings.
TRAIN_NUMBERS = {"image_size": (int, 16, True), "epochs": (int, 1, True), "batch_size": (int, 1, True),
                 "lr": (float, 0.0, False), "weight_decay": (float, 0.0, True), "val_fraction": (float, 0.0, True),
                 "seed": (int, 0, True), "num_workers": (int, 0, True), "dropout": (float, 0.0, True)}


def check_train_config(cfg: DictConfig | dict) -> dict:
    """The training settings and the dataset, checked in one line each before anything loads.

    Args:
        cfg: the training config.

    Raises:
        ConfigError: the first bad setting.
    """
    from salip_bench.evaluation.validation import ConfigError, check_dataset

    plain = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    hp = plain.get("unet")
    if not isinstance(hp, dict):
        raise ConfigError(f"unet={hp!r}: expected the mapping of conf/train.yaml")
    for key, (kind, low, inclusive) in TRAIN_NUMBERS.items():
        value = hp.get(key)
        number = (isinstance(value, (int, float)) and not isinstance(value, bool)
                  and (kind is float or type(value) is int))
        if not number or not (value >= low if inclusive else value > low):
            raise ConfigError(f"unet.{key}={value!r}: expected {'an integer' if kind is int else 'a number'} "
                              f"{'>=' if inclusive else '>'} {low}")
    if not hp["val_fraction"] < 1:
        raise ConfigError(f"unet.val_fraction={hp['val_fraction']!r}: expected a fraction in [0, 1)")
    if hp.get("threads") is not None and (type(hp["threads"]) is not int or hp["threads"] < 1):
        raise ConfigError(f"unet.threads={hp['threads']!r}: expected an integer >= 1 or null")
    check_dataset(plain["dataset"], needs_prompts=False)
    return plain


@hydra.main(version_base="1.3", config_path=str(Path(__file__).resolve().parent / "conf"), config_name="train")
def _main(cfg: DictConfig) -> float | None:
    quiet_console()
    from salip_bench.evaluation.validation import ConfigError

    try:
        check_train_config(cfg)
    except ConfigError as err:
        log.error("%s", err)
        sys.exit(2)
    from salip_bench.evaluation.interrupts import stop_on_signals
    from salip_bench.evaluation.run_lock import RunLock, RunLockedError

    out_dir = HydraConfig.get().runtime.output_dir
    with one_line_exits(out_dir, (PluginError, ConfigError, RunLockedError)), RunLock(out_dir), stop_on_signals():
        summary = train(cfg, out_dir)
    return summary["best_val_dice"]  # the value a Hydra sweeper optimises


def main() -> None:
    precheck("train")  # overrides that do not compose, an unusable output_dir: one line, exit 2
    _main()


if __name__ == "__main__":
    main()
