"""Base class of the CLIP retrievers: visual prompts scored against text prototypes, top-k per class.

A subclass only says how a candidate becomes a picture (``visual_prompt``); text prototypes,
batching, scoring and top-k selection live here once.
"""
from __future__ import annotations

import numpy as np
import torch

from salip_bench.engines.clip import ClipEngine
from salip_bench.types import Candidates, Retrieved


def _is_setting(value: object) -> bool:
    """A scalar, or a list or tuple of scalars: what a visual prompt's parameters look like."""
    scalar = (bool, int, float, str, type(None))
    return isinstance(value, scalar) or (isinstance(value, (list, tuple)) and all(isinstance(v, scalar) for v in value))


class ClipRetriever:
    """Score each candidate's visual prompt by cosine similarity to each class's text prototype.

    A class's prototype is the mean of its sentences' L2-normalised CLIP text embeddings,
    re-normalised, computed when the retriever is built (once per run: retrievers of one run, as
    in tuning, share the engine's text embeddings). For every class the
    ``top_k[class]`` best candidates are retrieved. batch_size: visual prompts per CLIP forward;
    workers: threads building and preprocessing visual prompts (default: torch's intra-op thread
    count, so a process limited to n threads stays within n; results do not depend on it).
    ``clip``, ``class_prompts`` ({class: [sentences]}) and ``top_k`` ({class: k}) are injected.
    """

    def __init__(self, clip: ClipEngine, class_prompts: dict[str, list[str]], top_k: dict[str, int],
                 batch_size: int = 32, workers: int | None = None) -> None:
        missing = sorted(set(class_prompts) - set(top_k))
        if missing:
            raise ValueError(f"no top_k for class(es) {missing}")
        self.clip = clip
        self.classes = list(class_prompts)
        self.top_k = top_k
        self.batch_size = batch_size
        self.workers = workers if workers is not None else torch.get_num_threads()
        cache = getattr(clip, "embedding_cache", None)  # the same sentences in every trial of a tuning: once
        encode = clip.encode_texts if cache is None else lambda sentences: cache.texts(clip, sentences)
        self.prototypes = torch.stack([
            torch.nn.functional.normalize(encode(list(sentences)).mean(dim=0), dim=0)
            for sentences in class_prompts.values()])  # (C, D)

    def visual_prompt(self, image: np.ndarray, mask: np.ndarray, box: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def prompt_signature(self) -> dict:
        """How a candidate becomes a picture: this retriever's class and its parameters (its public
        scalar attributes other than batching), the embedding cache's key for the visual prompt."""
        params = {k: v for k, v in vars(self).items()
                  if not k.startswith("_") and k not in ("batch_size", "workers", "classes") and _is_setting(v)}
        return {"kind": f"{type(self).__module__}.{type(self).__qualname__}", **params}

    def scores(self, image: np.ndarray, candidates: Candidates) -> np.ndarray:
        """(N, C) cosine similarity of every candidate to every class prototype; embeddings CLIP made
        before for this image, prompt and candidate come from its embedding cache."""
        def build(i: int) -> np.ndarray:
            return self.visual_prompt(image, candidates.masks[i], candidates.boxes[i])

        cache = getattr(self.clip, "embedding_cache", None)
        if cache is None:
            embeddings = self.clip.encode_built(len(candidates), build, self.batch_size, self.workers)
        else:
            embeddings = cache.embed(self.clip, self.prompt_signature(), image, candidates.masks, candidates.boxes,
                                     build, self.batch_size, self.workers)
        with torch.autocast("cpu", enabled=False):  # cosine similarities in float32 under bf16 autocast too
            return (embeddings @ self.prototypes.T).numpy()

    def __call__(self, image: np.ndarray, candidates: Candidates) -> Retrieved:
        if len(candidates) == 0:
            return Retrieved(candidates, [], np.zeros(0, np.float32), np.zeros(0, np.int64))
        similarity = self.scores(image, candidates)
        picked, classes, scores = [], [], []
        for column, name in enumerate(self.classes):
            order = np.argsort(-similarity[:, column], kind="stable")[: self.top_k[name]]
            picked.extend(order.tolist())
            classes.extend([name] * len(order))
            scores.extend(similarity[order, column].tolist())
        index = np.asarray(picked, np.int64)
        return Retrieved(candidates.select(index), classes, np.asarray(scores, np.float32), index)
