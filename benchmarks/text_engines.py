"""CPU seconds per image of the CLIP-family and SAM 3 engines (random weights, real sizes or tiny).

    python benchmarks/text_engines.py clip/biomedclip_tiny clip/biomedclip model/sam3_tiny model/sam3

For an embedder: one image embedded alone (batch 1) and a batch of 32 visual prompts (what a SaLIP
retriever sends per image), per image. For SAM 3: the image backbone + one text prompt, and each
further prompt on the same image. Reports the median of ``--repeats`` runs after one warm-up, the
build time and the thread count; numbers are for notes, not assertions.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from common import model_config
from salip_bench.engines.builder import build_engine


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(entry: str, repeats: int, image: np.ndarray) -> dict:
    group, name = entry.split("/")
    cfg = model_config(group, name)
    start = time.perf_counter()
    engine = build_engine(cfg, "random", group)
    result = {"config": entry, "build_s": round(time.perf_counter() - start, 2), "threads": torch.get_num_threads(),
              "parameters_M": round(sum(p.numel() for p in engine.parameters()) / 1e6, 2)}
    if hasattr(engine, "segment_text"):
        def first_prompt() -> None:
            engine.reset()
            engine.segment_text(image, "lungs", min_score=0.0, max_instances=2)

        result["image_plus_one_prompt_s"] = round(timed(first_prompt, repeats), 3)
        result["each_further_prompt_s"] = round(timed(lambda: engine.segment_text(image, "left lung", 0.0, 2),
                                                      repeats), 3)
    else:
        crops = [image[i * 8:i * 8 + 200, i * 8:i * 8 + 200] for i in range(32)]
        result["one_image_s"] = round(timed(lambda: engine.encode_images([image], batch_size=1), repeats), 3)
        result["per_prompt_in_batch_of_32_s"] = round(timed(lambda: engine.encode_images(crops), repeats) / 32, 4)
        result["texts_8_s"] = round(timed(lambda: engine.encode_texts(["a dark lung field"] * 8), repeats), 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("entries", nargs="+", help="GROUP/NAME of conf/clip or conf/model yamls")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--side", type=int, default=512, help="square test image side")
    args = parser.parse_args()
    image = np.random.default_rng(0).integers(0, 255, (args.side, args.side, 3), dtype=np.uint8)
    for entry in args.entries:
        print(json.dumps(measure(entry, args.repeats, image)), flush=True)


if __name__ == "__main__":
    main()
