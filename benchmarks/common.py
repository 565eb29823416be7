"""What both benchmark scripts share: model configs by name, a peak-memory meter, tables, JSON."""
from __future__ import annotations

import argparse
import json
import logging
import os
import threading
import time
import warnings
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
SHARED_DATA = Path(os.environ.get("SALIP_BENCH_SHARED_DATA") or REPO.parent / "shared" / "data")  # as tests/


def parser_with_common_args(doc: str, model: str, images: int, points_per_side: int, json_name: str
                             ) -> argparse.ArgumentParser:
    """The options both benchmarks take: models (random weights), the images, the grid, the JSON file."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--model", default=model, help="conf/model/<name>.yaml (random weights)")
    parser.add_argument("--clip", default="tiny", help="conf/clip/<name>.yaml or its arch, e.g. ViT-L-14")
    parser.add_argument("--data", default=str(SHARED_DATA / "us_fetal_head"), help="a folder dataset")
    parser.add_argument("--prompts", default="fetal_head")
    parser.add_argument("--images", type=int, default=images, help="the first N images")
    parser.add_argument("--points-per-side", type=int, default=points_per_side)
    parser.add_argument("--json", default=str(REPO / "outputs" / json_name))
    return parser


def model_config(group: str, name: str) -> dict:
    """``conf/<group>/<name>.yaml``, or for ``clip`` also the yaml whose ``arch`` is ``name`` (ViT-L-14)."""
    path = CONF / group / f"{name}.yaml"
    if not path.is_file():
        matches = [p for p in sorted((CONF / group).glob("*.yaml")) if OmegaConf.load(p).get("arch") == name]
        if not matches:
            raise SystemExit(f"no conf/{group}/{name}.yaml and no {group} yaml with arch {name}")
        path = matches[0]
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


def clip_overrides(name: str) -> list[str]:
    """``clip=<name>`` for a conf/clip yaml, else the yaml with that ``arch``, else any open_clip
    architecture on the ViT-L/14 yaml (benchmarks use random weights: the pretrained tag is unused)."""
    if (CONF / "clip" / f"{name}.yaml").is_file():
        return [f"clip={name}"]
    matches = [p.stem for p in sorted((CONF / "clip").glob("*.yaml")) if OmegaConf.load(p).get("arch") == name]
    return [f"clip={matches[0]}"] if matches else ["clip=vit_l14_openai", f"clip.arch={name}"]


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:  # Linux: resident pages are the second field
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory above the level at ``start()``: sampled RSS on CPU, the allocator's peak on CUDA."""

    def __init__(self, device: torch.device, interval_s: float = 0.002) -> None:
        self.device, self.interval_s = device, interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.base = self.peak = 0

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return
        self.base = self.peak = rss_bytes()
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, rss_bytes())

    def stop(self) -> float:
        """MB above the start level at the peak."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return (torch.cuda.max_memory_allocated(self.device) - self.base) / 1e6
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        return (self.peak - self.base) / 1e6


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def now(device: torch.device) -> float:
    """A clock reading after the device has finished its queued work."""
    synchronize(device)
    return time.perf_counter()


def table(rows: list[list], header: list[str]) -> str:
    cells = [[f"{c:.3f}" if isinstance(c, float) else str(c) for c in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in cells]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str))
    print(f"wrote {path}")


def harness_config(args: argparse.Namespace, *overrides: str) -> dict:
    """The smoke experiment on ``--data`` with ``--model``/``--clip`` (random weights), no logger or
    progress bar, plus ``overrides``: the resolved config a benchmark hands to ``harness.run``."""
    base = ["experiment=smoke", f"model={args.model}", *clip_overrides(args.clip), "logger=none", "dataset=folder",
            f"dataset.root={args.data}", f"dataset.prompts={args.prompts}",
            f"generator.points_per_side={args.points_per_side}", "trainer.enable_progress_bar=false"]
    return composed_config([*base, *overrides])


def composed_config(overrides: list[str]) -> dict:
    """``conf/config.yaml`` with ``overrides``, resolved: what ``salip-bench OVERRIDES`` would run."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return OmegaConf.to_container(compose(config_name="config", overrides=overrides), resolve=True)


def timed_run(cfg: dict, out: Path) -> tuple[float, dict]:
    """One whole ``harness.run`` of ``cfg`` into ``out``: its wall-clock seconds and summary."""
    from salip_bench.evaluation.harness import run  # torch and Lightning: only for benchmarks that run

    start = time.perf_counter()
    summary = run(cfg, out)
    return time.perf_counter() - start, summary


def quiet_harness_logs() -> None:
    """Benchmarks call the harness many times: its per-run banners and Lightning's notices are noise."""
    logging.getLogger("salip_bench").setLevel(logging.ERROR)  # one random-weights banner per run
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning's own deprecation notice, once per run
