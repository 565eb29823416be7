"""Scale-out: Lightning DDP predict with 2 CPU processes (gloo) through the real command line.

Each sample must run exactly once across the ranks, and only global rank 0 may write the tables
and the W&B run, after every rank has finished. A single-device run first finishes 2 samples; the
DDP run resumes it to 5, so 3 are pending: an odd count, where a padding sampler would run one twice.
"""
from __future__ import annotations

import json
import re

import lightning as L
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from conftest import CONF, CXR, compose_config
from salip_bench.evaluation.harness import check_launchable, run
from salip_bench.evaluation.job import Job
from test_cli import run_cli

# Smoke models, and 2x2 generator points instead of 4x4: fewer candidates, same code paths.
ARGS = ["experiment=smoke", "generator.points_per_side=2", "dataset=folder", f"dataset.root={CXR}",
        "dataset.prompts=lungs", "dataset.top_k=2"]
DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.enable_progress_bar=false"]


def written_per_rank(log: str) -> dict[int, int]:
    """Samples each rank wrote, from the ``rank R of N wrote K samples`` lines of the harness."""
    found = {int(rank): int(count) for rank, count in re.findall(r"rank (\d+) of 2 wrote (\d+) samples", log)}
    assert len(found) == 2, log[-3000:]
    return found


def test_ddp_predict_runs_each_sample_once_and_summarises_once(tmp_path):
    out = tmp_path / "OUT"
    run(compose_config(ARGS + [f"output_dir={out}", "logger=none", "limit=2"]), out)  # one device, in process
    finished = {p.name: p.read_text() for p in (out / "samples").glob("*.json")}
    assert len(finished) == 2

    result = run_cli(ARGS + DDP + [f"output_dir={out}", "limit=5", "logger.overlays=3"], tmp_path,
                     timeout=300)  # W&B offline
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert log.count("5 samples, 2 already done, 3 to run") == 2  # both ranks agree on the pending set
    assert written_per_rank(log) == {0: 2, 1: 1}  # 3 pending, none padded in twice
    assert log.count("n_ok=5 n_failed=0") == 1  # tables derived once, by rank 0

    expected = sorted(p.stem for p in (CXR / "images").iterdir())[:5]
    frame = pd.read_csv(out / "results.csv")
    assert sorted(frame["id"]) == expected and frame["id"].is_unique
    records = [json.loads(p.read_text()) for p in sorted((out / "samples").glob("*.json"))]
    assert sorted(r["id"] for r in records) == expected
    assert all((out / "samples" / name).read_text() == text for name, text in finished.items())  # not redone
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_ok"] == 5 and summary["n_failed"] == 0
    for counter in ("sam_encoder_passes", "clip_images_encoded"):
        assert summary["work"][counter] == sum(r[counter] for r in records)
    assert summary["work"]["sam_encoder_passes"] == 5
    assert len(list((out / "wandb").glob("offline-run-*"))) == 1  # no W&B run from rank 1
    # The first 3 samples of the whole run, though rank 0 predicted only 2 (and none of the first 2).
    assert len(list((out / "wandb").glob("offline-run-*/files/media/images/*.png"))) == 3


def test_ddp_inside_a_local_multirun_is_refused():
    """Lightning would re-run the whole ``-m`` sweep in every rank; a clear error instead."""
    ddp = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False)
    single = L.Trainer(accelerator="cpu", devices=1, logger=False)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["trainer=ddp"], return_hydra_config=True)
    cfg.hydra.mode = RunMode.MULTIRUN
    HydraConfig.instance().set_config(cfg)
    try:
        job = Job.from_hydra()  # what the entry points read, once
    finally:
        HydraConfig.instance().cfg = None  # other tests see no Hydra job, as before
    check_launchable(single, job)
    with pytest.raises(ValueError, match="local multirun"):
        check_launchable(ddp, job)
    check_launchable(ddp, Job(multirun=False))  # a plain (single-run) DDP job is fine
    check_launchable(ddp)  # and so is a library call


@pytest.mark.slow
def test_ddp_keeps_a_volume_on_one_rank_for_volume_methods(tmp_path):
    """Two 6-slice volumes over 2 ranks: each rank gets one whole volume, so each volume's sampled
    slices run SaLIP once (strided shares would make both ranks compute both volumes)."""
    from conftest import MRI

    data = tmp_path / "data"
    data.mkdir()
    for case in ("a", "b"):
        (data / f"{case}_T1w.nii.gz").symlink_to(MRI / "mni152_2mm_T1w.nii.gz")
        (data / f"{case}_brainmask.nii.gz").symlink_to(MRI / "mni152_2mm_brainmask.nii.gz")
    out = tmp_path / "OUT"
    args = ["experiment=smoke", "generator.points_per_side=2", "method=salip_propagate", "model=sam2_tiny",
            "method.count=2", "dataset=volumes", f"dataset.root={data}", "dataset.image_pattern='*_T1w.nii.gz'",
            "dataset.mask_pattern='{id}_brainmask.nii.gz'", "dataset.prompts=brain", "dataset.slice_range=[40,46]"]
    result = run_cli(args + DDP + [f"output_dir={out}", "logger=none"], tmp_path, timeout=300)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert written_per_rank(log) == {0: 6, 1: 6}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_ok"] == 12
    for volume in summary["per_volume"].values():
        assert volume["work"]["everything_passes"] == 2 and volume["work"]["propagation_frames"] == 5
