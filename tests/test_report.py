"""``salip-bench-report`` on small hand-made runs written the way the harness writes them."""
from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from salip_bench.evaluation.aggregate import aggregate_records
from salip_bench.evaluation.records import RecordStore, results_frame
from salip_bench.metrics import dice_iou_from_counts
from salip_bench.report import attribute_failures, find_runs, main, method_labels

# Hand-made stage scores on chest X-rays, one sample per failure category at tau=0.5, delta=0.05.
CXR = [("gen_miss", 0.30, 0.20, 0.25), ("ret_miss", 0.90, 0.40, 0.45), ("ref_loss", 0.90, 0.80, 0.60),
       ("ok_small_loss", 0.90, 0.80, 0.78), ("ok_gain", 0.60, 0.55, 0.90)]


def _config(method: str, dataset: str, root: str, roi: str, retriever: str, output_dir: Path) -> dict:
    return {"method": {"name": method}, "dataset": {"name": dataset, "root": root, "prompts": roi, "top_k": 1},
            "model": {"name": "sam_vit_b", "image_size": 1024}, "clip": {"arch": "ViT-L-14"},
            "generator": {"name": "sam_everything", "points_per_side": 32},
            "filter": {"name": "area", "max_area": 0.5}, "retriever": {"name": retriever, "batch_size": 32},
            "refiner": {"name": "sam_box"}, "weights": "pretrained", "seed": 0, "limit": None,
            "output_dir": str(output_dir), "trainer": {"accelerator": "cpu"}, "logger": {"name": "none"}}


def write_run(out_dir: Path, records: list[dict], *, method: str = "salip", dataset: str = "folder",
              root: str = "../shared/data/cxr_lung", roi: str = "lungs", retriever: str = "crop") -> dict:
    """Records, results.csv and summary.json as ``harness.finalize`` leaves them."""
    store = RecordStore(out_dir)
    for record in records:
        store.write(record, None)
    records = store.read_all([r["id"] for r in records])
    (out_dir / "results.csv").write_text(results_frame(records).to_csv(index=False))
    overrides = [f"method={method}", f"retriever={retriever}", f"dataset={dataset}", f"dataset.root={root}"]
    summary = {**aggregate_records(records).aggregates_dict(), "method": method, "dataset": dataset,
               "dataset_root": root, "roi": roi,
               "overrides": overrides, "config": _config(method, dataset, root, roi, retriever, out_dir)}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def ok(sample_id: str, dice: float, oracle: float | None = None, retrieved: float | None = None, **extra) -> dict:
    record = {"id": sample_id, "status": "ok", "failure": "", "dice": dice, "iou": dice / (2 - dice), **extra}
    if oracle is not None:
        record.update(oracle_dice=oracle, retrieved_dice=retrieved)
    return record


def failed(sample_id: str, **extra) -> dict:
    return {"id": sample_id, "status": "failed", "failure": "ValueError: unreadable image", **extra}


def slice_record(volume: str, index: int, domain: str, tp: int, fp: int, fn: int) -> dict:
    dice, iou = dice_iou_from_counts(tp, fp, fn)
    return ok(f"{volume}_{index:03d}", dice, volume=volume, slice=index, domain=domain, tp=tp, fp=fp, fn=fn)


@pytest.fixture()
def runs(tmp_path: Path) -> dict[str, Path]:
    """A single CXR run (crop retriever, one failed sample), a multirun over retrievers on HC18, a
    per-domain volume run on CC359 and a baseline whose samples all failed."""
    cxr = tmp_path / "cxr_crop"
    write_run(cxr, [ok(i, d, o, r) for i, o, r, d in CXR] + [failed("broken")])
    multirun = tmp_path / "multirun"
    for job, retriever in enumerate(["crop", "box"]):
        write_run(multirun / str(job), [ok(f"hc{i}", 0.7 + 0.1 * i + 0.05 * job, 0.9, 0.8) for i in range(3)],
                  root="../shared/data/hc18", roi="fetal_head", retriever=retriever)
    cc359 = tmp_path / "cc359"
    write_run(cc359, [slice_record("s1", 0, "siemens", 80, 10, 10), slice_record("s1", 1, "siemens", 60, 20, 20),
                      slice_record("s2", 0, "siemens", 50, 0, 50), slice_record("p1", 0, "philips", 90, 5, 5),
                      failed("p1_001", volume="p1", slice=1, domain="philips")],
              dataset="cc359", root="../shared/data/cc359", roi="brain")
    baseline = tmp_path / "baseline"
    write_run(baseline, [failed("a"), failed("b")], method="sam_grid")
    return {"cxr": cxr, "multirun": multirun, "cc359": cc359, "baseline": baseline}


def report(tmp_path: Path, dirs: list[Path], *extra: str) -> Path:
    out = tmp_path / "report"
    main([*map(str, dirs), "--out", str(out), *extra])
    return out


def test_table_rows_and_columns(tmp_path: Path, runs: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    out = report(tmp_path, list(runs.values()))
    table = pd.read_csv(out / "table.csv")
    assert list(zip(table["roi"], table["dataset"], table["domain"], table["level"])) == [
        ("brain", "cc359", "philips", "volume"), ("brain", "cc359", "siemens", "volume"),
        ("brain", "cc359", "all", "volume"), ("fetal_head", "hc18", "all", "image"),
        ("lungs", "cxr_lung", "all", "image")]
    crop, box = "salip (retriever=crop)", "salip (retriever=box)"
    for method in (crop, box, "sam_grid"):
        for column in ("DSC mean", "DSC std", "mIoU mean", "mIoU std"):
            assert f"{method} {column}" in table.columns
    rows = table.set_index(["dataset", "domain"])
    cxr_summary = json.loads((runs["cxr"] / "summary.json").read_text())
    assert rows.loc[("cxr_lung", "all"), f"{crop} DSC mean"] == pytest.approx(cxr_summary["dice_mean"])
    assert rows.loc[("cxr_lung", "all"), f"{crop} n_failed"] == 1
    assert np.isnan(rows.loc[("cxr_lung", "all"), f"{box} DSC mean"])  # box ran only on HC18
    assert np.isnan(rows.loc[("cxr_lung", "all"), "sam_grid DSC mean"])  # everything failed
    assert rows.loc[("hc18", "all"), f"{box} DSC mean"] == pytest.approx(0.85)
    assert rows.loc[("hc18", "all"), f"{crop} DSC mean"] == pytest.approx(0.8)
    # Volumes: 3D Dice from the summed counts of each volume, averaged over the domain's volumes.
    s1, s2 = dice_iou_from_counts(140, 30, 30)[0], dice_iou_from_counts(50, 0, 50)[0]
    p1 = dice_iou_from_counts(90, 5, 5)[0]
    assert rows.loc[("cc359", "siemens"), f"{crop} DSC mean"] == pytest.approx(np.mean([s1, s2]))
    assert rows.loc[("cc359", "siemens"), f"{crop} DSC std"] == pytest.approx(np.std([s1, s2]))
    assert rows.loc[("cc359", "philips"), f"{crop} DSC mean"] == pytest.approx(p1)
    assert rows.loc[("cc359", "all"), f"{crop} DSC mean"] == pytest.approx(np.mean([s1, s2, p1]))

    markdown = (out / "table.md").read_text()
    assert markdown.splitlines()[0].startswith(f"| ROI | Dataset | Domain | {crop} DSC | {crop} mIoU |")
    assert "| brain | cc359 | siemens (3D) |" in markdown
    lungs = next(line for line in markdown.splitlines() if line.startswith("| lungs "))
    assert f"{cxr_summary['dice_mean']:.3f}±{cxr_summary['dice_std']:.3f}" in lungs
    assert lungs.endswith("| – | – |")  # sam_grid: all samples failed
    assert markdown.split("\n\n")[0] in capsys.readouterr().out


def test_dice_plot_is_png(tmp_path: Path, runs: dict[str, Path]) -> None:
    out = report(tmp_path, [runs["cxr"], runs["multirun"], runs["baseline"]])
    assert (out / "dice.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out / "dice.png") as image:
        assert image.size[0] > 100 and image.size[1] > 100


def test_failure_attribution_counts(tmp_path: Path, runs: dict[str, Path]) -> None:
    out = report(tmp_path, [runs["cxr"], runs["multirun"], runs["baseline"]])
    failures = pd.read_csv(out / "failures.csv").set_index(["dataset", "method"])
    cxr = failures.loc[("cxr_lung", "salip (retriever=crop)")]
    assert (cxr["n"], cxr["generator_miss"], cxr["retriever_miss"], cxr["refinement_loss"], cxr["ok"],
            cxr["failed"], cxr["unscored"]) == (6, 1, 1, 1, 2, 1, 0)
    assert cxr["oracle_dice_mean"] == pytest.approx(np.mean([o for _, o, _, _ in CXR]))
    assert failures.loc[("hc18", "salip (retriever=box)"), "ok"] == 3
    assert ("cxr_lung", "sam_grid") not in failures.index  # no stage scores: listed as not attributable
    text = (out / "failures.md").read_text()
    assert "| lungs | cxr_lung | salip (retriever=crop) | 6 | 1 (17%) | 1 (17%) | 1 (17%) | 2 (33%) | 1 (17%) |" in text
    assert "sam_grid on cxr_lung" in text


def test_thresholds_move_samples(tmp_path: Path, runs: dict[str, Path]) -> None:
    results = pd.read_csv(runs["cxr"] / "results.csv")
    loose = attribute_failures(results, tau=0.25, delta=0.25)
    assert loose.tolist() == ["retriever_miss", "ok", "ok", "ok", "ok", "failed"]
    strict = attribute_failures(results, tau=0.85, delta=0.0)
    assert strict.tolist() == ["generator_miss", "retriever_miss", "retriever_miss", "retriever_miss",
                               "generator_miss", "failed"]
    out = report(tmp_path, [runs["cxr"]], "--tau", "0.85", "--delta", "0")
    assert pd.read_csv(out / "failures.csv").loc[0, "retriever_miss"] == 3


def test_multirun_found_in_job_order_and_labelled_by_retriever(runs: dict[str, Path]) -> None:
    found = find_runs([runs["multirun"], runs["multirun"] / "1"])  # overlapping dirs: each run once
    assert [run.path.name for run in found] == ["0", "1"]
    assert method_labels(found) == ["salip (retriever=crop)", "salip (retriever=box)"]


def test_same_configuration_twice_is_told_apart_by_folder(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    for out_dir in (first, second):
        write_run(out_dir, [ok("x", 0.5)])
    labels = method_labels(find_runs([first, second]))
    assert len(set(labels)) == 2 and all(str(d) in label for d, label in zip((first, second), labels))


def test_run_dir_without_summary_is_an_error(tmp_path: Path, runs: dict[str, Path],
                                             capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / "empty"
    (empty / "samples").mkdir(parents=True)
    for bad in (empty, tmp_path / "missing"):
        with pytest.raises(SystemExit) as exit_info:
            report(tmp_path, [runs["cxr"], bad])
        assert exit_info.value.code != 0
        assert str(bad) in capsys.readouterr().err


def test_precision_labels_runs_and_retriever_threads_do_not(tmp_path: Path) -> None:
    """bf16 changes predictions (a setting in the label); retriever.workers changes none (ignored)."""
    dirs = []
    for name, trainer, workers in (("fp32", {"accelerator": "cpu"}, 1), ("bf16", {"precision": "bf16-mixed"}, 2)):
        dirs.append(tmp_path / name)
        write_run(dirs[-1], [ok("x", 0.5)])
        summary = json.loads((dirs[-1] / "summary.json").read_text())
        summary["config"]["trainer"] = trainer
        summary["config"]["retriever"]["workers"] = workers
        (dirs[-1] / "summary.json").write_text(json.dumps(summary))
    runs = find_runs(dirs)
    assert "trainer.precision" in runs[1].settings and "retriever.workers" not in runs[1].settings
    labels = method_labels(runs)
    assert "bf16-mixed" in labels[1] and "workers" not in " ".join(labels)
