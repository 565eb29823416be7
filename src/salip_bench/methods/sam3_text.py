"""Method ``sam3_text``: SAM 3 prompted with the organ's class names and/or sentences (no SAM/CLIP cascade)."""
from __future__ import annotations

import numpy as np

from salip_bench.engines.roles import TextPromptSegmenter, require_role
from salip_bench.qc.signals import SAM3_SCORE, SAM3_SIGNALS, number
from salip_bench.registry import METHODS
from salip_bench.types import Prediction, Sample

PROMPT_MODES = ("class_name", "sentences", "both")


@METHODS.register("sam3_text")
class Sam3TextMethod:
    """Every instance SAM 3 finds for each class's text prompts; the ``top_k`` best by score per class,
    their union is the mask. The baseline a SaLIP-style cascade must beat: one model doing it all.

    prompt: ``class_name`` (the class key, underscores as spaces: "fetal head"), ``sentences`` (each of the
    class's descriptive sentences) or ``both``; instances of all of a class's prompts compete for its top-k.
    min_score: SAM 3's instance score threshold (upstream's default 0.5). ``sam`` (built from
    ``model=sam3``/``sam3_tiny``), ``class_prompts`` and ``top_k`` are injected.
    """

    needs_prompts = True  # prompts SAM 3 with the organ's names / sentences: dataset.prompts must be set
    info_columns = {"n_prompts": "int", "n_instances": "int", "instance_classes": "json", "instance_scores": "json",
                    "instance_boxes": "json"}
    qc_signals = SAM3_SIGNALS  # its own instance scores (salip_bench.qc)
    default_qc = "sam3_score"

    def __init__(self, sam: object, class_prompts: dict[str, list[str]], top_k: dict[str, int],
                 prompt: str = "class_name", min_score: float = 0.5) -> None:
        require_role(sam, TextPromptSegmenter, "method sam3_text", "model=sam3 or model=sam3_tiny")
        if prompt not in PROMPT_MODES:
            raise ValueError(f"method.prompt={prompt!r}: choose one of {', '.join(PROMPT_MODES)}")
        self.sam, self.top_k, self.min_score = sam, top_k, min_score
        self.prompts = {c: prompts_for(c, sentences, prompt) for c, sentences in class_prompts.items()}

    def __call__(self, sample: Sample) -> Prediction:
        height, width = sample.image.shape[:2]
        mask = np.zeros((height, width), bool)
        classes, scores, boxes, found = [], [], [], 0
        organ = sample.meta.get("organ")  # one organ of a multi-organ run: only its sentences
        chosen = {organ: self.prompts[organ]} if organ is not None else self.prompts
        for name, texts in chosen.items():
            k = self.top_k[name]
            pooled = [self.sam.segment_text(sample.image, text, min_score=self.min_score, max_instances=k)
                      for text in texts]
            class_scores = np.concatenate([p[1] for p in pooled])
            found += len(class_scores)
            best = np.argsort(-class_scores, kind="stable")[:k]
            class_masks = np.concatenate([p[0] for p in pooled])[best]
            mask |= class_masks.any(axis=0) if len(best) else False
            classes += [name] * len(best)
            scores += class_scores[best].tolist()
            boxes.append(np.concatenate([p[2] for p in pooled])[best])
        boxes_xyxy = np.clip(np.concatenate(boxes), 0, [width - 1, height - 1, width - 1, height - 1]) \
            if boxes else np.zeros((0, 4), np.float32)
        info = {"n_prompts": sum(len(t) for t in chosen.values()), "n_instances": found,
                "instance_classes": classes, "instance_scores": np.round(scores, 5).tolist(),
                "instance_boxes": np.round(boxes_xyxy, 1).tolist(),
                SAM3_SCORE: number(np.mean(scores)) if scores else None}
        return Prediction(mask=mask, boxes=boxes_xyxy.astype(np.float32), info=info)


def prompts_for(class_name: str, sentences: list[str], mode: str) -> list[str]:
    """The texts SAM 3 is prompted with for one class."""
    name = [class_name.replace("_", " ")]
    return {"class_name": name, "sentences": list(sentences), "both": name + list(sentences)}[mode]
