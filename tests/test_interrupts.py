"""Interrupted runs and tunings resume to the uninterrupted result: real entry points in their own
processes, stopped by SIGKILL, SIGTERM or SIGINT at several points (inside a sample, between two
samples, while writing the tables), then run again with the same command."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import HC18, HC18_TRAIN, REPO, SMOKE
from salip_bench.evaluation.interrupts import INTERRUPTED_STATUS
from salip_bench.evaluation.run_lock import LOCK_NAME
from salip_bench.evaluation.schema import SAMPLE_COUNTERS

# The entry point named by argv[1], with a stall at STALL_AT while the file STALL_FLAG exists (the
# test removes it before resuming): "sample:<id>[:<call>]" inside the <call>-th evaluation of <id>
# (tuning evaluates each image once per trial), "between:<id>" before <id> is marked started,
# "finalize" for a few seconds while the tables are written, "epoch:<n>" before training epoch <n> (0-based).
DRIVER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    flag, point = Path(os.environ["STALL_FLAG"]), os.environ["STALL_AT"]
    kind, _, where = point.partition(":")

    def stall(seconds=600):
        if flag.exists():
            flag.with_suffix(".inside").touch()
            time.sleep(seconds)

    from salip_bench.evaluation import finalize, lightning_module, loop_module
    calls = {}
    if kind == "sample":
        sample_id, _, call = where.partition(":")
        evaluate = lightning_module.PredictModule.evaluate
        def patched(self, sample):
            calls[sample.id] = calls.get(sample.id, 0) + 1
            if sample.id == sample_id and calls[sample.id] == int(call or 1):
                stall()
            return evaluate(self, sample)
        lightning_module.PredictModule.evaluate = patched
    elif kind == "between":
        start = loop_module.LoopWriter.on_predict_batch_start
        def patched(self, trainer, module, batch, *args, **kwargs):
            if batch[0].id == where:
                stall()
            return start(self, trainer, module, batch, *args, **kwargs)
        loop_module.LoopWriter.on_predict_batch_start = patched
    elif kind == "epoch":
        from salip_bench.engines import unet
        start = unet.UNetModule.on_train_epoch_start
        def patched(self):
            if self.current_epoch == int(where):
                stall()
            return start(self)
        unet.UNetModule.on_train_epoch_start = patched
    elif kind == "finalize":
        write = finalize.write_tables
        def patched(*args, **kwargs):
            stall(4)
            return write(*args, **kwargs)
        finalize.write_tables = patched
    entry = sys.argv[1]
    sys.argv = [entry, *sys.argv[2:]]
    if entry == "salip-bench":
        from salip_bench.cli import main
    elif entry == "salip-bench-train":
        from salip_bench.train import main
    else:
        from salip_bench.tune import main
    main()
""")
EVAL = ["dataset=folder", f"dataset.root={HC18}", "dataset.prompts=fetal_head", "generator.points_per_side=2"]
RUN = SMOKE + EVAL + ["limit=3"]
TUNE = SMOKE + EVAL + [f"tune.split.root={HC18_TRAIN}", "tune.baseline=false", "tune.n_trials=2", "tune.n_images=2",
                       "~tune.space", "+tune.space.generator.pred_iou_thresh=[0.0,0.5]",
                       "+tune.space.filter.max_area=[0.5,0.95]"]
# Per-sample work and time depend on what an earlier (interrupted) process already did.
VOLATILE = ["seconds", *SAMPLE_COUNTERS]


def launch(tmp_path: Path, entry: str, args: list[str], stall_at: str = "none") -> subprocess.Popen:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "STALL_AT": stall_at,
           "STALL_FLAG": str(tmp_path / "stall"), "PYTHONPATH": str(REPO / "src")}
    return subprocess.Popen([sys.executable, str(driver), entry, *args], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen) -> tuple[int, str]:
    output = process.communicate(timeout=600)[0]
    return process.returncode, output


def content(out: Path) -> pd.DataFrame:
    frame = pd.read_csv(out / "results.csv")
    return frame.drop(columns=[c for c in VOLATILE if c in frame.columns]).sort_values("id").reset_index(drop=True)


def interrupt(tmp_path: Path, entry: str, args: list[str], stall_at: str, signum: int,
              while_stalled=lambda: None) -> tuple[int, str]:
    """Start with a stall at ``stall_at``, call ``while_stalled()`` and send ``signum`` once it stalls;
    returns (status, output)."""
    (tmp_path / "stall").touch()
    process = launch(tmp_path, entry, args, stall_at)
    deadline = time.monotonic() + 300
    while not (tmp_path / "stall.inside").exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"never reached {stall_at}: {process.communicate()[0][-3000:]}")
        time.sleep(0.2)
    try:
        while_stalled()
    except BaseException:
        process.kill()
        raise
    process.send_signal(signum)
    started = time.monotonic()
    status, output = finish(process)
    if signum != signal.SIGKILL:
        assert time.monotonic() - started < 30, output  # within seconds, not after the run's remaining work
    (tmp_path / "stall").unlink(missing_ok=True)
    (tmp_path / "stall.inside").unlink(missing_ok=True)
    return status, output


def check_stopped(status: int, output: str, signum: int, out: Path) -> None:
    """A stop signal: the distinct status and line, the tables written, the lock released, no marker naming
    a process; SIGKILL: killed as such."""
    if signum == signal.SIGKILL:
        assert status == -signal.SIGKILL
        return
    assert status == INTERRUPTED_STATUS, output[-3000:]
    assert "interrupted, resume to continue" in output and "Traceback" not in output, output[-3000:]
    assert not (out / LOCK_NAME).exists()
    for marker in (out / "samples").glob("*.started"):
        assert yaml.safe_load(marker.read_text())["pid"] is None


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> pd.DataFrame:
    tmp = tmp_path_factory.mktemp("uninterrupted")
    status, output = finish(launch(tmp, "salip-bench", [*RUN, f"output_dir={tmp / 'out'}"]))
    assert status == 0, output[-3000:]
    return content(tmp / "out")


# Each case starts two processes (about a minute on two shared cores): one in the default suite.
RUN_CASES = [("sample:208_HC", signal.SIGTERM)]
SLOW_CASES = [("sample:208_HC", signal.SIGKILL), ("between:208_HC", signal.SIGINT), ("finalize", signal.SIGTERM),
              ("sample:208_HC", signal.SIGINT), ("between:208_HC", signal.SIGKILL),
              ("between:249_HC", signal.SIGTERM), ("finalize", signal.SIGKILL), ("finalize", signal.SIGINT),
              ("sample:100_HC", signal.SIGTERM)]


@pytest.mark.parametrize("stall_at, signum", RUN_CASES + [pytest.param(*c, marks=pytest.mark.slow) for c in SLOW_CASES])
def test_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path, reference, stall_at, signum):
    out = tmp_path / "out"
    args = [*RUN, f"output_dir={out}"]
    status, output = interrupt(tmp_path, "salip-bench", args, stall_at, signum)
    check_stopped(status, output, signum, out)
    if signum != signal.SIGKILL and stall_at.startswith("sample:208"):  # what finished is already tabled
        assert content(out)["id"].tolist() == ["100_HC"]
    status, output = finish(launch(tmp_path, "salip-bench", args))
    assert status == 0, output[-3000:]
    pd.testing.assert_frame_equal(content(out), reference)
    assert not list((out / "samples").glob("*.started")) and not (out / LOCK_NAME).exists()


def tuning_outcome(out: Path) -> tuple:
    trials = pd.read_csv(out / "trials.csv")
    tuned = yaml.safe_load((out / "tuned.yaml").read_text())
    runs = [content(out / "trials" / str(n)) for n in range(len(trials))]
    return trials, tuned, runs


@pytest.fixture(scope="module")
def tuned_reference(tmp_path_factory) -> tuple:
    tmp = tmp_path_factory.mktemp("tuned")
    status, output = finish(launch(tmp, "salip-bench-tune", [*TUNE, f"output_dir={tmp / 'out'}"]))
    assert status == 0, output[-3000:]
    return tuning_outcome(tmp / "out")


def assert_same_tuning(got: tuple, expected: tuple) -> None:
    pd.testing.assert_frame_equal(got[0], expected[0])
    assert got[1] == expected[1]
    for mine, theirs in zip(got[2], expected[2]):
        pd.testing.assert_frame_equal(mine, theirs)


TUNE_CASES = [("true", "sample:016_HC:2", signal.SIGKILL)]  # image by image: the 2nd trial of the 2nd image
SLOW_TUNE_CASES = [("true", "sample:016_HC:1", signal.SIGTERM), ("false", "sample:016_HC:2", signal.SIGKILL),
                   ("false", "sample:002_HC:2", signal.SIGINT)]


@pytest.mark.parametrize("reuse, stall_at, signum",
                         TUNE_CASES + [pytest.param(*c, marks=pytest.mark.slow) for c in SLOW_TUNE_CASES])
def test_interrupted_tuning_resumes_to_the_uninterrupted_result(tmp_path, tuned_reference, reuse, stall_at, signum):
    out = tmp_path / "out"
    args = [*TUNE, f"tune.reuse={reuse}", f"output_dir={out}"]
    trial = 1 if stall_at.endswith(":2") else 0

    def held_and_marked() -> None:  # the trial in flight is locked and its sample marked, as a run's
        assert (out / "trials" / str(trial) / LOCK_NAME).is_file() and (out / LOCK_NAME).is_file()
        assert (out / "trials" / str(trial) / "samples" / f"{stall_at.split(':')[1]}.started").is_file()

    status, output = interrupt(tmp_path, "salip-bench-tune", args, stall_at, signum, held_and_marked)
    if signum != signal.SIGKILL:
        assert status == INTERRUPTED_STATUS and "interrupted, resume to continue" in output, output[-3000:]
        assert not list(out.rglob(LOCK_NAME))
    status, output = finish(launch(tmp_path, "salip-bench-tune", args))
    assert status == 0, output[-3000:]
    assert_same_tuning(tuning_outcome(out), tuned_reference)
    assert not list(out.rglob("*.started")) and not list(out.rglob(LOCK_NAME))


TRAIN = ["dataset=folder", f"dataset.root={HC18_TRAIN}", "unet.epochs=3", "unet.image_size=32", "unet.batch_size=4"]


def trained(out: Path) -> tuple[dict, dict]:
    import torch

    summary = yaml.safe_load((out / "train_summary.json").read_text())
    state = torch.load(out / "unet.ckpt", map_location="cpu", weights_only=False)
    return {k: summary[k] for k in ("best_val_dice", "best_epoch", "epochs_run", "val_ids")}, state


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_interrupted_training_resumes_to_the_uninterrupted_weights(tmp_path, signum):
    import torch

    status, output = finish(launch(tmp_path, "salip-bench-train", [*TRAIN, f"output_dir={tmp_path / 'ref'}"]))
    assert status == 0, output[-3000:]
    out = tmp_path / "out"
    status, output = interrupt(tmp_path, "salip-bench-train", [*TRAIN, f"output_dir={out}"], "epoch:2", signum)
    if signum != signal.SIGKILL:
        assert status == INTERRUPTED_STATUS and "interrupted, resume to continue" in output, output[-3000:]
        assert not (out / LOCK_NAME).exists()
    assert (out / "last.ckpt").is_file() and not (out / "unet.ckpt").exists()
    status, output = finish(launch(tmp_path, "salip-bench-train", [*TRAIN, f"output_dir={out}"]))
    assert status == 0 and "resuming from" in output, output[-3000:]
    (summary, state), (expected, reference) = trained(out), trained(tmp_path / "ref")
    assert summary == expected
    weights, reference_weights = state["state_dict"], reference["state_dict"]
    assert weights.keys() == reference_weights.keys()
    assert all(torch.equal(weights[k], reference_weights[k]) for k in weights)


def test_a_stop_signal_waits_for_a_deferred_block_and_a_second_one_is_only_logged():
    from salip_bench.evaluation.interrupts import RunInterrupted, deferred, stop_on_signals

    done = []
    with pytest.raises(RunInterrupted) as stopped, stop_on_signals():
        with deferred():  # writing a record: the signal waits until it is written
            os.kill(os.getpid(), signal.SIGTERM)
            done.append("record written")
        done.append("never")
    assert done == ["record written"] and stopped.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    with pytest.raises(RunInterrupted), stop_on_signals():
        try:
            os.kill(os.getpid(), signal.SIGINT)
        finally:
            with deferred():  # the tables, while stopping: a second signal does not cut them short
                os.kill(os.getpid(), signal.SIGINT)
                done.append("tables written")
    assert done[-1] == "tables written"


def test_slurm_warning_signal_requeues_the_job(tmp_path, monkeypatch):
    from salip_bench.evaluation.interrupts import RunInterrupted, requeue_if_asked, stop_on_signals

    calls = tmp_path / "calls"
    (tmp_path / "scontrol").write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n")
    (tmp_path / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    with pytest.raises(RunInterrupted) as stopped, stop_on_signals():
        os.kill(os.getpid(), signal.SIGUSR1)  # sbatch --signal=USR1@90
    assert stopped.value.requeue and requeue_if_asked(stopped.value)
    assert calls.read_text().split() == ["requeue", "4242"]
    assert not requeue_if_asked(RunInterrupted(signal.SIGTERM))  # a plain stop does not requeue
