"""Qualitative figures (the paper's Fig. 3–5, from any set of runs): per run the best, median and
worst image by Dice, and per dataset one page with every method on the same images.

Each panel shows the image, the ground-truth outline (green), the predicted outline (red), the
boxes the method prompted with (yellow: retrieved candidates, or GT boxes for ``gt_sam``) and the
Dice in the corner. Images and ground truth are read through the run's own dataset config, so the
data must be readable where the report is written; otherwise the figure is skipped with a note.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from salip_bench.reporting.figures import _pyplot

MAX_SIDE = 384  # panels are downsampled to this for small files; outlines stay visible
CASES = ("best", "median", "worst")


class SampleReader:
    """Image, ground truth, prediction and boxes of one run's samples, by id."""

    def __init__(self, run) -> None:  # a reporting.runs.Run
        self.run = run
        self._dataset = None
        self._index: dict[str, int] = {}

    def dataset(self):
        if self._dataset is None:
            from salip_bench.registry import DATASETS

            config = self.run.summary.dataset_config
            if not config.get("name"):
                raise ValueError("summary.json has no dataset config")
            self._dataset = DATASETS.build(config)
            self._index = {sample_id: i for i, sample_id in enumerate(self._dataset.ids)}
        return self._dataset

    def load(self, sample_id: str) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
        """(RGB image, GT mask or None, predicted mask, (N, 4) XYXY boxes)."""
        from salip_bench.storage.files import safe_name

        dataset = self.dataset()
        if sample_id not in self._index:
            raise KeyError(f"sample {sample_id} is not in the dataset any more")
        sample = dataset[self._index[sample_id]]
        if sample.error:
            raise ValueError(sample.error)
        mask_path = self.run.path / "masks" / f"{safe_name(sample_id)}.png"
        if not mask_path.is_file():
            raise FileNotFoundError(f"no predicted mask {mask_path} (run with save_masks=true)")
        with Image.open(mask_path) as png:
            prediction = np.asarray(png) > 0
        return sample.image, sample.mask, prediction, self.boxes(sample_id)

    def boxes(self, sample_id: str) -> np.ndarray:
        results = self.run.results
        row = results[results["id"].astype(str) == sample_id]
        for column in ("boxes", "retrieved_boxes"):
            if column in row.columns and len(row) and isinstance(row[column].iloc[0], str):
                return np.asarray(json.loads(row[column].iloc[0]), np.float32).reshape(-1, 4)
        return np.zeros((0, 4), np.float32)


def scored(results: pd.DataFrame | None) -> pd.Series:
    """Per-image Dice of the ok, labelled samples, by id, in id order."""
    if results is None or "dice" not in results.columns:
        return pd.Series(dtype=float)
    ok = results[results["status"].astype(str) == "ok"]
    dice = pd.to_numeric(ok["dice"], errors="coerce").set_axis(ok["id"].astype(str)).dropna()
    return dice[~dice.index.duplicated()].sort_index()


def pick_cases(dice: pd.Series) -> list[tuple[str, str]]:
    """(case, id) of the best, median and worst image (ties broken by id; fewer for < 3 images)."""
    if dice.empty:
        return []
    ranked = dice.sort_values(ascending=False, kind="stable")
    positions = {"best": 0, "median": (len(ranked) - 1) // 2, "worst": len(ranked) - 1}
    picked: list[tuple[str, str]] = []
    for case in CASES:
        sample_id = str(ranked.index[positions[case]])
        if sample_id not in [i for _, i in picked]:
            picked.append((case, sample_id))
    return picked


def draw_panel(axis, image: np.ndarray, target: np.ndarray | None, prediction: np.ndarray,
               boxes: np.ndarray, title: str, dice: float | None) -> None:
    step = max(1, int(np.ceil(max(image.shape[:2]) / MAX_SIDE)))
    axis.imshow(image[::step, ::step], interpolation="nearest")
    for mask, colour in ((target, "lime"), (prediction, "red")):
        if mask is not None and mask.any():
            axis.contour(mask[::step, ::step].astype(float), levels=[0.5], colors=colour, linewidths=1.2)
    for x0, y0, x1, y1 in boxes / step:
        axis.add_patch(_rectangle(x0, y0, x1, y1))
    corner = f"Dice {dice:.3f}" if dice is not None else "unlabelled"
    axis.text(0.02, 0.98, corner, transform=axis.transAxes, va="top", ha="left", fontsize=8, color="white",
              bbox={"facecolor": "black", "alpha": 0.6, "pad": 2, "edgecolor": "none"})
    axis.set_title(title, fontsize=8)
    axis.set_axis_off()


def _rectangle(x0: float, y0: float, x1: float, y1: float):
    from matplotlib.patches import Rectangle

    return Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="yellow", linewidth=1.0, linestyle="--")


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:80] or "run"


def unused(path: Path) -> Path:
    """``path``, or ``<stem>_2.png``, ... if an earlier figure of this report took it (two runs
    with one label on one dataset); stale files of an earlier report are overwritten."""
    path.parent.mkdir(parents=True, exist_ok=True)
    taken = _TAKEN.setdefault(path.parent, set())
    candidate, n = path, 1
    while candidate in taken:
        n += 1
        candidate = path.with_name(f"{path.stem}_{n}{path.suffix}")
    taken.add(candidate)
    return candidate


_TAKEN: dict[Path, set[Path]] = {}


def run_grid(run, label: str, out_dir: Path) -> tuple[Path | None, str | None]:
    """Best / median / worst of one run (the first three images for an unlabelled run) as one PNG.
    Returns (path, None) or (None, why it was skipped)."""
    dice = scored(run.results)
    if dice.empty and run.results is not None:  # unlabelled: overlays without GT
        ok = run.results[run.results["status"].astype(str) == "ok"]["id"].astype(str).tolist()
        cases = [(f"image {i + 1}", sample_id) for i, sample_id in enumerate(sorted(ok)[:3])]
    else:
        cases = pick_cases(dice)
    if not cases:
        return None, f"{label} on {run.dataset}: no finished image to show"
    reader = SampleReader(run)
    try:
        panels = [(case, sample_id, *reader.load(sample_id)) for case, sample_id in cases]
    except Exception as err:  # data moved or unreadable: the report goes on without it
        return None, f"{label} on {run.dataset}: figure skipped ({type(err).__name__}: {err})"
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6), squeeze=False)
    for axis, (case, sample_id, image, target, prediction, boxes) in zip(axes[0], panels):
        draw_panel(axis, image, target, prediction, boxes, f"{case}: {sample_id}",
                   float(dice[sample_id]) if sample_id in dice.index else None)
    figure.suptitle(f"{label} — {run.dataset} ({run.roi})", fontsize=9)
    figure.tight_layout()
    path = unused(out_dir / f"{slug(run.dataset)}__{slug(label)}.png")
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path, None


def side_by_side(runs: list, labels: list[str], reference: int, out_dir: Path) -> tuple[Path | None, str | None]:
    """All runs of one dataset on the same images: the reference run's best / median / worst among
    the images every labelled run scored; one row per image, one column per method."""
    members = [(run, label) for run, label in zip(runs, labels) if not scored(run.results).empty]
    if len(members) < 2:
        return None, None
    dataset = runs[0].dataset
    shared = set.intersection(*(set(scored(run.results).index) for run, _ in members))
    ref_run = runs[reference] if not scored(runs[reference].results).empty else members[0][0]
    cases = pick_cases(scored(ref_run.results).loc[sorted(shared)]) if shared else []
    if not cases:
        return None, f"{dataset}: no image scored by every method, no side-by-side page"
    plt = _pyplot()
    figure, axes = plt.subplots(len(cases), len(members), figsize=(3.0 * len(members), 3.2 * len(cases)),
                                squeeze=False)
    for column, (run, label) in enumerate(members):
        reader, dice = SampleReader(run), scored(run.results)
        for row, (case, sample_id) in enumerate(cases):
            axis = axes[row, column]
            try:
                image, target, prediction, boxes = reader.load(sample_id)
            except Exception as err:
                plt.close(figure)
                return None, f"{dataset}: side-by-side page skipped ({type(err).__name__}: {err})"
            draw_panel(axis, image, target, prediction, boxes, f"{label}\n{case}: {sample_id}", float(dice[sample_id]))
    figure.suptitle(f"{dataset}: every method on the same images (cases by {labels[runs.index(ref_run)]})",
                    fontsize=9)
    figure.tight_layout()
    path = unused(out_dir / f"{slug(dataset)}__side_by_side.png")
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path, None


def write_figures(runs: list, labels: list[str], references: dict[str, int],
                  out_dir: Path) -> tuple[list[tuple[str, Path]], list[str]]:
    """Every run's grid and each dataset's side-by-side page under ``out_dir``.

    Args:
        runs / labels: the report's runs and their method labels.
        references: dataset → index (into ``runs``) of its reference run.
        out_dir: folder of the PNGs.

    Returns [(caption, path)] and the notes on figures that were skipped.
    """
    figures: list[tuple[str, Path]] = []
    notes: list[str] = []
    _TAKEN.pop(out_dir, None)  # a new report into this folder
    for run, label in zip(runs, labels):
        path, note = run_grid(run, label, out_dir)
        if path is not None:
            what = "best / median / worst by Dice" if not scored(run.results).empty else "unlabelled: predictions only"
            figures.append((f"{label} on {run.dataset}: {what}", path))
        if note:
            notes.append(note)
    for dataset, reference in references.items():
        members = [i for i, run in enumerate(runs) if run.dataset == dataset]
        path, note = side_by_side([runs[i] for i in members], [labels[i] for i in members],
                                  members.index(reference), out_dir)
        if path is not None:
            figures.append((f"{dataset}: all methods side by side", path))
        if note:
            notes.append(note)
    return figures, notes
