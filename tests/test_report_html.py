"""The report's statistics (against scipy.stats), figures and self-contained HTML page, on hand-made runs."""
from __future__ import annotations

import base64
import io
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import stats

from salip_bench.evaluation.records import RecordStore
from salip_bench.report import main
from salip_bench.reporting.stats import bootstrap_ci, holm, paired_tests, wilcoxon_paired
from test_report import ok, write_run

IDS = [f"img{i}" for i in range(6)]


def test_bootstrap_ci_is_scipys_percentile_interval_and_seeded():
    values = np.random.default_rng(3).uniform(0.4, 0.9, 25)
    expected = stats.bootstrap((values,), np.mean, n_resamples=9999, method="percentile",
                               rng=np.random.default_rng(0)).confidence_interval
    assert bootstrap_ci(values, seed=0) == (pytest.approx(expected.low), pytest.approx(expected.high))
    assert bootstrap_ci(values, seed=0) == bootstrap_ci(values, seed=0)
    assert bootstrap_ci(values, seed=1) != bootstrap_ci(values, seed=0)
    low, high = bootstrap_ci(values)
    assert low < values.mean() < high
    assert bootstrap_ci(np.array([0.5])) == (None, None)
    assert bootstrap_ci(np.array([0.5, 0.5, 0.5])) == (0.5, 0.5)


def test_holm_and_wilcoxon():
    assert holm([0.01, 0.04, 0.03, None]) == [pytest.approx(0.03), pytest.approx(0.06), pytest.approx(0.06), None]
    assert holm([0.5, 0.9]) == [pytest.approx(1.0), pytest.approx(1.0)]  # capped, monotone
    a, b = np.array([0.8, 0.7, 0.9, 0.6, 0.75, 0.85]), np.array([0.6, 0.65, 0.7, 0.5, 0.7, 0.6])
    assert wilcoxon_paired(a, b) == pytest.approx(stats.wilcoxon(a, b).pvalue)
    assert wilcoxon_paired(a, a) == 1.0


def test_paired_tests_match_images_by_id():
    reference = pd.DataFrame({"id": ["a", "b", "c", "d", "e"], "status": "ok", "dice": [0.5, 0.6, 0.7, 0.4, 0.3]})
    other = pd.DataFrame({"id": ["e", "d", "c", "b", "a", "x"], "status": ["ok"] * 5 + ["ok"],
                          "dice": [0.5, 0.7, 0.9, 0.8, 0.6, 0.1]})  # shuffled, plus an image the reference lacks
    broken = other.assign(status=["ok", "ok", "failed", "ok", "ok", "ok"])
    tests = paired_tests([reference, other, broken], reference=0)
    assert tests[0]["p_wilcoxon"] is None and tests[0]["n_paired"] is None
    assert tests[1]["n_paired"] == 5 and tests[2]["n_paired"] == 4
    expected = stats.wilcoxon([0.6, 0.8, 0.9, 0.7, 0.5], [0.5, 0.6, 0.7, 0.4, 0.3]).pvalue
    assert tests[1]["p_wilcoxon"] == pytest.approx(expected)
    assert [tests[1]["p_holm"], tests[2]["p_holm"]] == pytest.approx(holm([tests[1]["p_wilcoxon"],
                                                                            tests[2]["p_wilcoxon"]]))
    assert tests[1]["p_holm"] >= tests[1]["p_wilcoxon"]


def labelled_folder(root: Path) -> Path:
    """Six 40×40 images with a square organ each, as a ``folder`` dataset."""
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for i, sample_id in enumerate(IDS):
        mask = np.zeros((40, 40), np.uint8)
        mask[8:30, 6 + i:28 + i] = 255
        image = np.clip(np.random.default_rng(i).normal(90, 20, (40, 40)) + mask * 0.4, 0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"{sample_id}.png")
        Image.fromarray(mask).save(root / "masks" / f"{sample_id}_mask.png")
    return root


def write_masks(run_dir: Path, shift: int) -> None:
    store = RecordStore(run_dir)
    for i, sample_id in enumerate(IDS):
        mask = np.zeros((40, 40), bool)
        mask[8 + shift:30, 6 + i:28 + i - shift] = True
        store.masks_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask.astype(np.uint8) * 255).save(store.masks_dir / f"{sample_id}.png")


@pytest.fixture()
def report_dir(tmp_path: Path) -> Path:
    data = labelled_folder(tmp_path / "organs")
    salip_dice = [0.9, 0.8, 0.7, 0.6, 0.85, 0.75]
    runs = {"salip": (salip_dice, 2), "gt_sam": ([d + 0.05 for d in salip_dice], 0),
            "unprompted_sam": ([d - 0.3 for d in salip_dice], 5)}
    for method, (dice, shift) in runs.items():
        records = [ok(i, d, min(1.0, d + 0.05), d, nsd=d, hd95=10 * (1 - d), gt_area=400,
                      boxes=[[6.0, 8.0, 28.0, 30.0]],
                      hc_abs_err_mm=3.0 + k) for k, (i, d) in enumerate(zip(IDS, dice))]
        write_run(tmp_path / method, records, method=method, root=str(data), roi="organ")
        write_masks(tmp_path / method, shift)
    unlabelled = tmp_path / "unlabelled"
    write_run(unlabelled, [{"id": i, "status": "ok", "failure": "", "gt_area": None} for i in IDS[:2]],
              root=str(data), roi="organ")
    summary = json.loads((unlabelled / "summary.json").read_text())
    (unlabelled / "summary.json").write_text(json.dumps({**summary, "dataset_root": str(tmp_path / "elsewhere")}))
    write_masks(unlabelled, 0)
    out = tmp_path / "report"
    main([str(tmp_path / m) for m in runs] + [str(unlabelled), "--out", str(out)])
    return out


class Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.tables = 0
        self.headings: list[str] = []
        self.links: list[str] = []
        self._in_heading = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if tag in ("link", "script", "a") and (attrs.get("href") or attrs.get("src")):
            self.links.append(attrs.get("href") or attrs.get("src"))
        self.tables += tag == "table"
        self._in_heading = tag in ("h1", "h2")

    def handle_data(self, data):
        if self._in_heading:
            self.headings.append(data)
            self._in_heading = False


def test_report_tables_carry_ci_and_paired_tests(report_dir: Path, tmp_path: Path):
    table = pd.read_csv(report_dir / "table.csv")
    row = table.iloc[0]
    dice = np.array([0.9, 0.8, 0.7, 0.6, 0.85, 0.75])
    expected = stats.bootstrap((dice,), np.mean, n_resamples=9999, method="percentile",
                               rng=np.random.default_rng(0)).confidence_interval
    assert row["salip DSC ci_low"] == pytest.approx(expected.low)
    assert row["salip DSC ci_high"] == pytest.approx(expected.high)
    assert row["salip DSC median"] == pytest.approx(np.median(dice))
    assert row["salip vs"] == "(reference)"  # the first salip run is the default reference
    assert row["gt_sam n_paired"] == 6 and row["unprompted_sam n_paired"] == 6
    raw = [stats.wilcoxon(dice + 0.05, dice).pvalue, stats.wilcoxon(dice - 0.3, dice).pvalue]
    assert row["gt_sam p_wilcoxon"] == pytest.approx(raw[0])
    assert [row["gt_sam p_holm"], row["unprompted_sam p_holm"]] == pytest.approx(holm(raw))
    assert row["salip NSD mean"] == pytest.approx(dice.mean())
    assert row["salip HD95 mean"] == pytest.approx((10 * (1 - dice)).mean())
    markdown = (report_dir / "table.md").read_text()
    assert f"[{expected.low:.3f}, {expected.high:.3f}]" in markdown and "n=6" in markdown
    assert "unlabelled" in markdown and "UNSCORED" in markdown
    assert "unlabelled" not in " ".join(table.columns)  # an unscored run gets no score columns
    hc = pd.read_csv(report_dir / "hc.csv")
    assert hc["hc_abs_diff_mm_mean"].tolist() == pytest.approx([5.5] * 3)
    assert hc["hc_abs_diff_mm_sd"].tolist() == pytest.approx([np.std(np.arange(3.0, 9.0), ddof=1)] * 3)

    other = tmp_path / "against_gt_sam"
    main([str(tmp_path / m) for m in ("salip", "gt_sam")] + ["--out", str(other), "--reference", "gt_sam"])
    assert pd.read_csv(other / "table.csv").iloc[0]["gt_sam vs"] == "(reference)"
    with pytest.raises(SystemExit):
        main([str(tmp_path / "salip"), "--out", str(other), "--reference", "nonexistent"])


def test_report_html_is_self_contained_with_every_figure(report_dir: Path):
    figures = sorted(p.name for p in (report_dir / "figures").glob("*.png"))
    assert figures == ["elsewhere__salip.png", "organs__gt_sam.png", "organs__salip.png", "organs__side_by_side.png",
                       "organs__unprompted_sam.png"]  # the unlabelled run's figure: predictions without GT
    page = Page()
    text = (report_dir / "report.html").read_text()
    page.feed(text)
    assert page.links == [] and "file://" not in text and "http" not in text.split("<body>")[1]
    assert len(page.images) == 1 + len(figures)  # the Dice plot and every figure
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as image:
            assert image.size[0] > 100
    assert page.tables >= 5  # scores, statistics, unscored runs, HC18, failures
    for heading in ("Scores", "Statistics", "Unscored runs (unlabelled images)", "Dice per image",
                    "Qualitative results",
                    "Head circumference (HC18)", "Failure attribution"):
        assert heading in page.headings
    assert "unlabelled: predictions only" in text and "skipped" not in text


def test_a_run_whose_data_is_gone_gets_a_note_instead_of_a_figure(report_dir: Path, tmp_path: Path):
    from salip_bench.report import find_runs
    from salip_bench.reporting.qualitative import run_grid

    run = find_runs([tmp_path / "salip"])[0]
    run.summary.config["dataset"]["root"] = str(tmp_path / "moved")
    path, note = run_grid(run, "salip", tmp_path / "figures")
    assert path is None and "figure skipped" in note and "moved" in note


def test_figure_picks_best_median_worst_and_draws_them(report_dir: Path):
    with Image.open(report_dir / "figures" / "organs__salip.png") as grid:
        pixels = np.asarray(grid.convert("RGB")).astype(int)
    red = (pixels[..., 0] > 200) & (pixels[..., 1] < 60) & (pixels[..., 2] < 60)
    green = (pixels[..., 1] > 200) & (pixels[..., 0] < 60) & (pixels[..., 2] < 60)
    assert red.sum() > 50 and green.sum() > 50  # predicted and GT outlines are drawn
    from salip_bench.reporting.qualitative import pick_cases

    dice = pd.Series([0.9, 0.8, 0.7, 0.6, 0.85, 0.75], index=IDS)
    assert pick_cases(dice) == [("best", "img0"), ("median", "img1"), ("worst", "img3")]  # 3rd of 6 by Dice
    assert pick_cases(dice.iloc[:1]) == [("best", "img0")]
