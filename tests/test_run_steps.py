"""The steps of a run that the harness composes: the launching job (Hydra read once, at the entry
points), the resume fingerprint and the files plugins declare for it, the inputs methods declare."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from conftest import CONF, SMOKE, compose_config
from salip_bench.evaluation.finalize import finalize
from salip_bench.evaluation.fingerprint import config_fingerprint, prediction_files
from salip_bench.evaluation.job import Job
from salip_bench.evaluation.records import RecordStore
from salip_bench.evaluation.validation import ConfigError, check_method_inputs, validate
from salip_bench.registry import METHODS


def hydra_job(overrides: list[str], mode: RunMode) -> Job:
    """:meth:`Job.from_hydra` while Hydra runs a job composed with ``overrides`` in ``mode``."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    cfg.hydra.mode = mode
    HydraConfig.instance().set_config(cfg)
    try:
        return Job.from_hydra()
    finally:
        HydraConfig.instance().cfg = None  # other tests see no Hydra job


def test_without_hydra_the_job_is_a_library_call():
    assert not HydraConfig.initialized()
    assert Job.from_hydra() == Job() == Job(overrides=[], multirun=False)


def test_the_job_holds_hydras_overrides_and_mode():
    job = hydra_job(["limit=2", "method=sam_clip"], RunMode.MULTIRUN)
    assert job == Job(overrides=["limit=2", "method=sam_clip"], multirun=True)
    assert hydra_job([], RunMode.RUN) == Job()


def test_the_summary_keeps_the_jobs_overrides(tmp_path):
    cfg = compose_config(SMOKE)
    for job, expected in ((Job(overrides=["limit=1"]), ["limit=1"]), (None, [])):
        summary = finalize(cfg, tmp_path, RecordStore(tmp_path), [], "0" * 16, engines={}, texts_encoded=0, job=job)
        assert summary["overrides"] == expected
        assert json.loads((tmp_path / "summary.json").read_text())["overrides"] == expected


# Fingerprints as the harness computed them before plugins declared their files (main at 9652e6c):
# existing runs must keep resuming, so these values may never change.
UNET_RUN = {"seed": 0, "weights": "random", "method": {"name": "unet", "checkpoint": "unet.ckpt", "threshold": 0.5},
            "dataset": {"name": "folder", "root": "data", "max_side": None}, "trainer": {"precision": "bf16-mixed"},
            "retriever": {"name": "crop", "workers": 2}, "output_dir": "x", "limit": 3}
PINNED = {b"not really a checkpoint": "6a14c30f011d8c9c", b"retrained": "a18c11709e5c9f1f", None: "150d37a6902c5453"}


@pytest.mark.parametrize("content", list(PINNED), ids=["checkpoint", "retrained", "no_file"])
def test_fingerprint_values_are_those_of_existing_runs(content, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the config names the checkpoint relative to here
    if content is not None:
        Path("unet.ckpt").write_bytes(content)
    assert config_fingerprint(UNET_RUN) == PINNED[content]


def test_a_retrained_checkpoint_is_another_configuration(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("unet.ckpt").write_bytes(b"first training")
    assert prediction_files(UNET_RUN) == {"method_checkpoint_sha256": Path("unet.ckpt")}
    first = config_fingerprint(UNET_RUN)
    Path("unet.ckpt").write_bytes(b"second training")  # same path, other weights
    assert config_fingerprint(UNET_RUN) != first
    Path("unet.ckpt").write_bytes(b"first training")
    assert config_fingerprint(UNET_RUN) == first


def test_only_declared_files_are_hashed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("sam.pth").write_bytes(b"weights")
    assert METHODS.get("unet").prediction_files({"checkpoint": "~/unet.ckpt"}) == {
        "checkpoint": Path("~/unet.ckpt").expanduser()}
    # A key named checkpoint in a plugin that declares no files (here an unregistered one) is config only.
    assert prediction_files({**UNET_RUN, "method": {"name": "no_such_method", "checkpoint": "sam.pth"}}) == {}
    assert prediction_files(compose_config(SMOKE)) == {}


@pytest.mark.parametrize("name", ["salip", "sam_clip", "sam3_text"])
def test_methods_that_read_the_prompts_declare_it(name):
    method = METHODS.get(name)
    assert method.needs_prompts
    with pytest.raises(ConfigError, match="dataset.prompts is required"):
        check_method_inputs(method, {"name": "folder", "prompts": None})
    check_method_inputs(method, {"name": "folder", "prompts": "lungs", "top_k": 1})


@pytest.mark.parametrize("name", ["unet", "gt_sam", "oracle", "unprompted_sam"])
def test_methods_that_never_read_the_prompts_run_without_them(name):
    assert not getattr(METHODS.get(name), "needs_prompts", False)
    check_method_inputs(METHODS.get(name), {"name": "folder", "prompts": "???"})


def test_validation_leaves_the_prompts_requirement_to_the_method_class():
    """validate runs before torch is imported, so it cannot read the class: a set value is still checked."""
    cfg = {"method": {"name": "salip"}, "dataset": {"name": "folder", "root": str(CONF), "prompts": None}}
    validate(cfg)
    with pytest.raises(ConfigError, match="unknown prompt set"):
        validate({**cfg, "dataset": {**cfg["dataset"], "prompts": "no_such_set"}})
