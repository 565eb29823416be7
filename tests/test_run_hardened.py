"""Runs that survive bad inputs, crashes and each other (tiny random models)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import HC18, REPO, SMOKE, compose_config
from salip_bench.evaluation.harness import run
from salip_bench.evaluation.memory import downscale, estimate_peak_bytes, upscale
from salip_bench.evaluation.records import CRASH_FAILURE, results_frame
from salip_bench.evaluation.run_lock import LOCK_NAME, RunLock, RunLockedError
from salip_bench.evaluation.validation import ConfigError
from salip_bench.types import Prediction, Sample


def hc18_copies(root: Path, names: dict[str, str]) -> Path:
    """``{new stem or file name: HC18 stem}`` → root/images + root/masks."""
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for new, source in names.items():
        target = new if Path(new).suffix else f"{new}.png"
        shutil.copy(HC18 / "images" / f"{source}.png", root / "images" / target)
        shutil.copy(HC18 / "masks" / f"{source}_mask.png", root / "masks" / f"{Path(target).stem}_mask.png")
    return root


def config(root: Path, out: Path, *extra: str) -> dict:
    return compose_config(SMOKE + ["dataset=folder", f"dataset.root={root}", "dataset.prompts=fetal_head",
                                   "generator.points_per_side=2", f"output_dir={out}", *extra])


def test_clashing_names_are_separate_samples_and_counts_stay_integer(tmp_path):
    root = hc18_copies(tmp_path / "data", {"dup.png": "100_HC", "col a": "208_HC", "col_a": "249_HC"})
    Image.open(root / "images" / "dup.png").convert("RGB").save(root / "images" / "dup.jpg", quality=95)
    (root / "images" / "broken.png").write_bytes(b"\x89PNG not an image")
    shutil.copy(root / "masks" / "dup_mask.png", root / "masks" / "broken_mask.png")
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="paired with both .*dup.jpg and .*dup.png"):  # one mask, two images
        run(config(root, out), out)
    summary = run(config(root, out, "dataset.shared_mask=true"), out)  # unless said to be shared
    assert summary["n_total"] == 5 and summary["n_ok"] == 4 and summary["n_failed"] == 1
    frame = pd.read_csv(out / "results.csv", dtype=str, keep_default_na=False).set_index("id")
    assert sorted(frame.index) == ["broken", "col a", "col_a", "dup.jpg", "dup.png"]
    assert len(list((out / "samples").glob("*.json"))) == 5 and len(list((out / "masks").glob("*.png"))) == 4
    for column in ("n_candidates", "n_kept", "gt_area", "pred_area", "sam_encoder_passes", "tp"):
        ok = frame.loc[frame["status"] == "ok", column]
        assert ok.str.fullmatch(r"\d+").all(), (column, ok.tolist())  # 12, not 12.0
        assert frame.loc["broken", column] == ""


def test_results_frame_keeps_integer_columns_integer():
    records = [{"id": "a", "status": "ok", "n_kept": 3, "dice": 0.5, "flag": True},
               {"id": "b", "status": "failed", "failure": "x"}]
    frame = results_frame(records)
    assert str(frame["n_kept"].dtype) == "Int64" and str(frame["dice"].dtype) == "float64"
    assert frame.to_csv(index=False).splitlines()[1].split(",")[frame.columns.get_loc("n_kept")] == "3"


def test_failed_samples_are_retried_on_resume_unless_told_not_to(tmp_path):
    root = hc18_copies(tmp_path / "data", {"100_HC": "100_HC"})
    (root / "images" / "flaky.png").write_bytes(b"half-copied")
    shutil.copy(root / "masks" / "100_HC_mask.png", root / "masks" / "flaky_mask.png")
    out = tmp_path / "out"
    assert run(config(root, out), out)["n_failed"] == 1
    shutil.copy(HC18 / "images" / "100_HC.png", root / "images" / "flaky.png")  # the transient problem is gone
    kept = run(config(root, out, "resume.retry_failed=false"), out)
    assert kept["n_failed"] == 1 and kept["work"]["sam_encoder_passes"] == 1
    retried = run(config(root, out), out)
    assert retried["n_ok"] == 2 and retried["n_failed"] == 0


def test_max_side_downscales_and_scores_at_full_resolution(tmp_path):
    root = hc18_copies(tmp_path / "data", {"100_HC": "100_HC"})
    out = tmp_path / "out"
    summary = run(config(root, out, "dataset.max_side=256"), out)
    record = json.loads((out / "samples" / "100_HC.json").read_text())
    assert summary["n_ok"] == 1 and record["processed_scale"] == pytest.approx(256 / 800, abs=1e-4)
    assert np.asarray(Image.open(out / "masks" / "100_HC.png")).shape == (540, 800)
    assert record["gt_area"] == int((np.asarray(Image.open(HC18 / "masks" / "100_HC_mask.png")) > 127).sum())


def test_downscale_and_upscale_round_trip():
    mask = np.zeros((600, 900), bool)
    mask[100:400, 200:700] = True
    sample = Sample(id="s", image=np.zeros((600, 900, 3), np.uint8), mask=mask)
    small, scale = downscale(sample, 300)
    assert small.image.shape == (200, 300, 3) and small.mask.shape == (200, 300) and scale == pytest.approx(1 / 3)
    assert downscale(sample, 1000) == (sample, 1.0)
    back = upscale(Prediction(mask=small.mask, boxes=np.array([[66.7, 33.3, 233.3, 133.3]], np.float32),
                              info={"retrieved_boxes": [[66.7, 33.3, 233.3, 133.3]]}), (600, 900), scale)
    assert back.mask.shape == (600, 900) and (back.mask == mask).mean() > 0.99
    assert back.info["retrieved_boxes"][0][0] == pytest.approx(200.1, abs=0.1)


def test_a_sample_that_would_not_fit_is_a_recorded_failure_before_it_runs(tmp_path):
    root = hc18_copies(tmp_path / "data", {"100_HC": "100_HC"})
    out = tmp_path / "out"
    summary = run(config(root, out, "memory_limit_gb=0.01"), out)
    record = json.loads((out / "samples" / "100_HC.json").read_text())
    assert summary["n_failed"] == 1 and record["failure"].startswith("MemoryEstimate: a 540x800 image needs about")
    assert "dataset.max_side=" in record["failure"] and record.get("sam_encoder_passes") is None
    settings = compose_config(SMOKE)["generator"]
    assert estimate_peak_bytes(6000, 6000, settings) > 10 * 2**30 > estimate_peak_bytes(540, 800, settings)


def test_cc359_run_with_a_corrupt_volume_and_a_nan_voxel(tmp_path):
    rng = np.random.default_rng(0)
    image = (rng.random((24, 20, 4)) * 1000).astype(np.float32)
    mask = np.zeros(image.shape, np.uint8)
    mask[4:18, 4:16] = 1
    dirty = image.copy()
    dirty[5, 5, 1] = np.nan
    for name, data in (("a_good", image), ("c_nan", dirty)):
        for sub, array, suffix in (("Original", data, ""), ("Silver-standard", mask, "_ss")):
            (tmp_path / sub).mkdir(exist_ok=True)
            nib.save(nib.Nifti1Image(array, np.eye(4)), str(tmp_path / sub / f"{name}{suffix}.nii.gz"))
    (tmp_path / "Original" / "b_bad.nii.gz").write_bytes(os.urandom(2048))
    out = tmp_path / "out"
    cfg = compose_config(SMOKE + ["dataset=cc359", f"dataset.root={tmp_path}", "dataset.slice_range=[1,3]",
                                  "generator.points_per_side=2", f"output_dir={out}"])
    summary = run(cfg, out)
    frame = pd.read_csv(out / "results.csv").set_index("id")
    assert summary["n_total"] == 5 and summary["n_ok"] == 4 and summary["n_ok_with_warning"] == 2
    assert "unreadable volume" in frame.loc["b_bad_unreadable", "failure"]
    assert frame.loc["c_nan_slice001", "warning"].startswith("volume c_nan has 1 non-finite")
    assert frame["warning"].isna().sum() == 3
    assert "a_good_slice001,ok" in (out / "results.csv").read_text() and (
        ",1.0," not in (out / "results.csv").read_text())
    assert summary["per_volume"]["b_bad"]["n_slices"] == 0 and summary["per_volume"]["a_good"]["n_slices"] == 2


# A run in its own process whose method stalls in sample "b_stall" (so the test can kill it there).
SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from conftest import SMOKE, compose_config
    from salip_bench.evaluation.harness import run
    from salip_bench.registry import METHODS
    from salip_bench.types import Prediction
    import numpy as np

    @METHODS.register("stall_on_b")
    class StallOnB:
        def __call__(self, sample):
            if sample.id == "b_stall" and sys.argv[3] == "stall":
                Path(sys.argv[2], "inside_b_stall").write_text("")
                time.sleep(600)
            return Prediction(mask=sample.mask.copy())

    root, out = sys.argv[1], sys.argv[2]
    cfg = compose_config(SMOKE + ["dataset=folder", "dataset.root=" + root, "dataset.prompts=fetal_head",
                                  "method=oracle", "output_dir=" + out])
    cfg["method"] = {{"name": "stall_on_b"}}
    try:
        summary = run(cfg, out)
    except Exception as err:
        print("ERROR", type(err).__name__, err)
        sys.exit(2)
    print("SUMMARY", summary["n_ok"], summary["n_failed"])
""")


def test_second_process_refused_then_kill_9_inside_a_sample_runs_it_again_twice_is_failed(tmp_path):
    root = hc18_copies(tmp_path / "data", {"a_ok": "100_HC", "b_stall": "208_HC", "c_ok": "249_HC"})
    out = tmp_path / "out"
    out.mkdir()
    script = tmp_path / "run_stalling.py"
    script.write_text(SCRIPT.format(tests=str(REPO / "tests")))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SALIP_BENCH_CACHE": str(tmp_path / "cache")}

    def start(mode: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(script), str(root), str(out), mode], env=env, cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    first = start("stall")
    deadline = time.monotonic() + 300
    while not (out / "inside_b_stall").exists():
        assert first.poll() is None and time.monotonic() < deadline, first.stdout.read() if first.poll() else "timeout"
        time.sleep(0.5)
    second = start("no-stall")  # the same output_dir while the first run is in it
    output = second.communicate(timeout=300)[0]
    assert second.returncode == 2 and "RunLockedError" in output and f"pid {first.pid}" in output, output
    assert (out / "samples" / "a_ok.json").is_file() and not (out / "samples" / "b_stall.json").exists()
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
    assert (out / LOCK_NAME).is_file()  # left behind by the killed run: stale
    # One death in b_stall: it runs again (and stalls again); a second death in it: recorded as failed.
    (out / "inside_b_stall").unlink()
    second = start("stall")
    while not (out / "inside_b_stall").exists():
        assert second.poll() is None and time.monotonic() < deadline, (
            second.stdout.read() if second.poll() else "timeout")
        time.sleep(0.5)
    assert json.loads((out / "samples" / "b_stall.started").read_text())["deaths"] == 1
    second.send_signal(signal.SIGKILL)
    second.wait(timeout=60)
    third = start("no-stall")
    output = third.communicate(timeout=300)[0]
    assert third.returncode == 0 and "SUMMARY 2 1" in output, output
    record = json.loads((out / "samples" / "b_stall.json").read_text())
    assert record["status"] == "failed" and record["failure"].startswith(CRASH_FAILURE)
    assert "2 times in a row" in record["failure"] and str(second.pid) in record["failure"]
    assert not (out / LOCK_NAME).exists() and not list((out / "samples").glob("*.started"))


def test_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = tmp_path / LOCK_NAME
        lock.write_text(json.dumps({"host": os.uname().nodename, "pid": holder.pid, "since": "now"}))
        with pytest.raises(RunLockedError, match=f"pid {holder.pid}"):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    with RunLock(tmp_path):  # the holder is gone: a stale lock
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()


def test_a_run_that_ends_on_its_own_leaves_no_crash_markers(tmp_path):
    """Ctrl-C or an error inside a sample ends the run through its finally: that sample is pending next
    time, not a crash; a marker of another (killed) process stays for the resume to count: one death
    runs it again, a second death in a row records it as failed."""
    from salip_bench.evaluation.records import RecordStore

    store = RecordStore(tmp_path)
    store.samples_dir.mkdir(parents=True, exist_ok=True)
    store.mark_started({"id": "mine", "status": "failed"})
    other = store.marker_path("killed")
    other.write_text(json.dumps({"id": "killed", "status": "failed", "pid": os.getpid() + 1, "started": 0}))
    store.clear_own_markers(["mine", "killed"])
    assert not store.marker_path("mine").exists() and other.exists()
    assert store.record_crashes(["mine", "killed"]) == []  # one death: pending again, the death counted
    assert json.loads(other.read_text())["deaths"] == 1 and json.loads(other.read_text())["pid"] is None
    store.mark_started({"id": "killed", "status": "failed"})  # the resume runs it, and dies in it again
    other.write_text(json.dumps({**json.loads(other.read_text()), "pid": os.getpid() + 1}))
    assert store.record_crashes(["mine", "killed"]) == ["killed"]
    assert "2 times in a row" in json.loads(store.record_path("killed").read_text())["failure"]
