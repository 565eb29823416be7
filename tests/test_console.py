"""What a newcomer sees: a first run on the embedded demo prints one line per event, no library noise,
and ends with where the results are and the headline numbers; a run that fails before any work leaves
no empty output folder behind."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

CLI = [str(Path(sys.executable).with_name("salip-bench"))]


def run_cli(args: list[str], cwd: Path, tmp_path: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    # A first run: no matplotlib font cache, no feature cache yet.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "SALIP_BENCH_CACHE": str(tmp_path / "cache"),
           "MPLCONFIGDIR": str(tmp_path / "mpl")}
    return subprocess.run(CLI + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_first_demo_run_prints_each_event_once_and_ends_with_results(tmp_path):
    out = tmp_path / "demo"
    result = run_cli(["model=sam_tiny", "clip=tiny", "weights=random", f"output_dir={out}"], tmp_path, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    # Lines with words: the random-weights banner's frame of "!" is one event drawn with two equal lines.
    lines = [line.strip() for line in (result.stdout + result.stderr).splitlines() if re.search(r"\w", line)]
    duplicated = sorted({line for line in lines if lines.count(line) > 1})
    assert not duplicated, duplicated
    noisy = [line for line in lines if re.search(r"warn|deprecat|tip:|litlogger|fontManager", line, re.IGNORECASE)]
    assert not noisy, noisy
    last = result.stdout.strip().splitlines()[-2:]
    assert last[0].startswith(f"results: {out.resolve()} (results.csv, summary.json, masks)"), last
    assert re.match(r"dice_mean=\d\.\d{4} iou_mean=\d\.\d{4} .*n_ok=3 n_failed=0", last[1]), last


def test_a_run_failing_before_any_work_leaves_no_folder(tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    missing = tmp_path / "missing_sam.pth"
    # The default timestamped output_dir (outputs/<now>): no weights, offline.
    result = run_cli([f"model.checkpoint={missing}"], cwd, tmp_path, timeout=300)
    assert result.returncode == 2 and "missing_sam.pth" in result.stdout + result.stderr, result.stderr[-2000:]
    assert list(cwd.iterdir()) == []
    # A bad setting (refused before the heavy imports), in nested folders that did not exist.
    result = run_cli(["dataset.top_k=0", f"output_dir={cwd / 'a' / 'b'}"], cwd, tmp_path, timeout=300)
    assert result.returncode == 2 and "top_k" in result.stdout + result.stderr, result.stderr[-2000:]
    assert list(cwd.iterdir()) == []
    # A folder that existed before the run is the user's: kept, even empty.
    (cwd / "mine").mkdir()
    result = run_cli([f"model.checkpoint={missing}", f"output_dir={cwd / 'mine'}"], cwd, tmp_path, timeout=300)
    assert result.returncode == 2
    assert [p.name for p in cwd.iterdir()] == ["mine"]
