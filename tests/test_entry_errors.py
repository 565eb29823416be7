"""Every entry point (salip-bench, -tune, -train, -report) ends in one line and exit status 2, without a
traceback, on: overrides that do not compose, an unusable output folder (an existing file, under a file,
one that cannot be created, a full disk), a config file of the wrong structure, bad settings, a busy
output folder. A report skips a run it cannot read, naming it, and renders the rest; a summary rebuilt
without what it knew says so."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import pytest

from conftest import HC18, HC18_TRAIN, REPO, SMOKE, compose_config
from salip_bench.evaluation.run_lock import LOCK_NAME

MODULES = {"salip-bench": "salip_bench.cli", "salip-bench-tune": "salip_bench.tune",
           "salip-bench-train": "salip_bench.train"}
EVAL = ["dataset=folder", f"dataset.root={HC18}", "dataset.prompts=fetal_head", "limit=1"]
ARGS = {"salip-bench": SMOKE + EVAL,
        "salip-bench-tune": SMOKE + EVAL + [f"tune.split.root={HC18_TRAIN}", "tune.n_trials=1", "tune.n_images=1"],
        "salip-bench-train": ["dataset=folder", f"dataset.root={HC18_TRAIN}", "unet.epochs=1", "unet.image_size=32"]}


def entry(name: str, *args: str, cwd=None) -> tuple[int, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run([sys.executable, "-m", MODULES[name], *args], env=env, cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=300)
    return done.returncode, (done.stdout + done.stderr).strip()


def assert_one_line(status: int, output: str, *expected: str) -> None:
    assert status == 2 and "Traceback" not in output, output[-3000:]
    assert len(output.splitlines()) == 1, output[-3000:]
    for text in expected:
        assert text in output, output


KINDS = ["file", "under_a_file", "cannot_create"]
# Each case is a process of its own (seconds on two shared cores): one kind per entry point by default.
UNUSABLE = [pytest.param(name, kind, marks=() if n == k else pytest.mark.slow)
            for n, name in enumerate(MODULES) for k, kind in enumerate(KINDS)]


@pytest.mark.parametrize("name, kind", UNUSABLE)
def test_unusable_output_dir(tmp_path, name, kind):
    (tmp_path / "a_file").write_text("x")
    out = {"file": tmp_path / "a_file", "under_a_file": tmp_path / "a_file" / "run",
           "cannot_create": "/proc/self/salip_run"}[kind]
    status, output = entry(name, *ARGS[name], f"output_dir={out}")
    assert_one_line(status, output, f"output_dir={out}")
    assert (tmp_path / "a_file").read_text() == "x"


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n == "salip-bench-tune" else pytest.mark.slow)
                                  for n in MODULES])
def test_overrides_that_do_not_compose(tmp_path, name):
    status, output = entry(name, *ARGS[name], "no_such_key=3", f"output_dir={tmp_path / 'out'}")
    assert_one_line(status, output, "no_such_key")
    assert not (tmp_path / "out").exists()


def slow(*values: object) -> object:
    return pytest.param(*values, marks=pytest.mark.slow)


@pytest.mark.parametrize("name, args, expected", [
    ("salip-bench", ["tuned={list_yaml}"], "no 'params' mapping"),
    slow("salip-bench", ["dataset.prompts={list_json}"], "must be a JSON object"),
    slow("salip-bench-tune", ["dataset.prompts={list_json}"], "must be a JSON object"),
    slow("salip-bench-tune", ["tune.space=[1,2]"], "tune.space"),
    ("salip-bench-tune", ["tune.n_trials=abc"], "tune.n_trials='abc'"),
    slow("salip-bench-tune", ["tune.reuse=3"], "tune.reuse=3"),
    slow("salip-bench-train", ["unet=3"], "unet=3"),
    ("salip-bench-train", ["unet.val_fraction=1.5"], "unet.val_fraction=1.5"),
    slow("salip-bench-train", ["unet.epochs=two"], "unet.epochs='two'"),
    slow("salip-bench-train", ["dataset.image_dir=nope"], "dataset.image_dir=nope"),
])
def test_config_of_the_wrong_structure_or_bad_settings(tmp_path, name, args, expected):
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    (tmp_path / "list.json").write_text('["fetal head", 1]')
    args = [a.format(list_yaml=tmp_path / "list.yaml", list_json=tmp_path / "list.json") for a in args]
    status, output = entry(name, *ARGS[name], *args, f"output_dir={tmp_path / 'out'}")
    assert status == 2 and "Traceback" not in output, output[-3000:]
    assert expected in output.splitlines()[-1], output[-3000:]


@pytest.mark.parametrize("name", ["salip-bench-tune", "salip-bench-train"])
def test_busy_output_folder(tmp_path, name):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        out = tmp_path / "out"
        out.mkdir()
        (out / LOCK_NAME).write_text(json.dumps({"host": os.uname().nodename, "pid": holder.pid, "since": "now"}))
        status, output = entry(name, *ARGS[name], f"output_dir={out}")
    finally:
        holder.kill()
        holder.wait()
    assert status == 2 and "Traceback" not in output, output[-3000:]
    assert "in use by another salip-bench run" in output.splitlines()[-1] and f"pid {holder.pid}" in output


FULL_DISK = """
import errno, os, sys
from salip_bench.evaluation import summary
def full(path, *args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
summary.write_if_changed = full
from salip_bench.cli import main
sys.argv = ["salip-bench", *sys.argv[1:]]
main()
"""


def test_full_disk_while_writing_the_tables_is_one_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run([sys.executable, "-c", FULL_DISK, *ARGS["salip-bench"], f"output_dir={tmp_path / 'out'}"],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    errors = [line for line in output.splitlines() if "No space left on device" in line]
    assert done.returncode == 2 and "Traceback" not in output, output[-3000:]
    assert len(errors) == 1 and "results.csv" in errors[0], output[-3000:]
    assert not (tmp_path / "out" / LOCK_NAME).exists()


def test_report_out_unusable_or_full(tmp_path, monkeypatch, capsys):
    from salip_bench import report
    from salip_bench.reporting import write
    from test_report import ok, write_run

    write_run(tmp_path / "run", [ok("x", 0.5)])
    (tmp_path / "a_file").write_text("x")
    for out in (tmp_path / "a_file", tmp_path / "a_file" / "sub"):
        with pytest.raises(SystemExit) as exit_info:
            report.main([str(tmp_path / "run"), "--out", str(out)])
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and f"--out={out}" in err, err

    def full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(write, "atomic_write_text", full)
    with pytest.raises(SystemExit) as exit_info:
        report.main([str(tmp_path / "run"), "--out", str(tmp_path / "report")])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and "No space left on device" in err, err


def test_report_skips_runs_it_cannot_read_and_renders_the_rest(tmp_path, capsys, caplog):
    from salip_bench.report import main
    from test_report import ok, write_run

    good, bad_summary, bad_results, foreign_results, no_summary, not_a_summary = (
        tmp_path / n for n in ("good", "bad_summary", "bad_results", "foreign_results", "no_summary", "not_a_summary"))
    for folder in (good, bad_summary, bad_results, foreign_results, not_a_summary):
        write_run(folder, [ok("x", 0.5), ok("y", 0.7)])
    (bad_summary / "summary.json").write_text('{"n_total": 2, "dice_mean": ')
    (bad_results / "results.csv").write_bytes(b"\x00\xff\xfe garbage \x00")
    (foreign_results / "results.csv").write_text("a,b\n1,2\n")
    (not_a_summary / "summary.json").write_text("[1, 2]")
    (no_summary / "samples").mkdir(parents=True)
    (no_summary / "results.csv").write_text("id,status\nx,ok\n")
    main([str(tmp_path), "--out", str(tmp_path / "report")])
    err = capsys.readouterr().err + "\n".join(r.getMessage() for r in caplog.records)  # pytest holds the log
    for folder in (bad_summary, bad_results, foreign_results, no_summary, not_a_summary):
        lines = [line for line in err.splitlines() if f"{folder}:" in line or line.endswith(str(folder))]
        assert len(lines) == 1 and "skipping" in lines[0], err
    assert "Traceback" not in err and str(good) not in err
    table = (tmp_path / "report" / "table.md").read_text()
    assert str(good) in table and (tmp_path / "report" / "report.html").is_file()


def test_a_rebuilt_summary_says_what_it_no_longer_knows(tmp_path):
    from salip_bench.evaluation.harness import run

    out = tmp_path / "out"
    cfg = compose_config(ARGS["salip-bench"] + [f"output_dir={out}"])
    first = run(cfg, out)
    assert first["weights_identity"] and "not_known" not in first
    (out / "summary.json").write_text("{ truncated")
    rebuilt = run(cfg, out)  # nothing to run: the tables are rebuilt from the records
    assert rebuilt["not_known"]["keys"] == ["weights_identity", "engines", "stage_engines"]
    assert rebuilt["n_ok"] == first["n_ok"] and rebuilt["dice_mean"] == first["dice_mean"]
    assert run(cfg, out)["not_known"] == rebuilt["not_known"]  # still not known on the next rebuild
