"""The CLIP retriever: visual prompts scored against text prototypes, top-k per class.

A built-in retriever is a visual-prompt function registered with :func:`register_visual_prompt`
(its yaml holds the function's parameters); text prototypes, batching, scoring and top-k selection
live here once. A third-party retriever may instead subclass :class:`ClipRetriever` and override
``visual_prompt``.
"""
from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from salip_bench.accepts import UNIT, Flag, IntAtLeast, Nullable, Rule, check_settings
from salip_bench.engines.clip_engine import ClipEngine
from salip_bench.registry import RETRIEVERS
from salip_bench.stages.retrievers.guards import BACKGROUND_SENTENCES, RetrievalGuards, retrieve_top_k, select_classes
from salip_bench.storage.content_keys import array_key
from salip_bench.types import Candidates, Retrieved

# What every CLIP retriever accepts; a built-in retriever's module adds its prompt's (``ACCEPTS``).
CLIP_ACCEPTS = {"batch_size": IntAtLeast(1), "workers": Nullable(IntAtLeast(1)), "dedup_iou": Nullable(UNIT),
                "exclusive": Flag()}
# (mask, box) -> the RGB uint8 picture CLIP looks at, for one image.
Draw = Callable[[np.ndarray, np.ndarray], np.ndarray]
# (image, **parameters) -> Draw: whatever all candidates of the image share is computed once, here.
VisualPrompt = Callable[..., Draw]


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
                 batch_size: int = 32, workers: int | None = None, dedup_iou: float | None = None,
                 exclusive: bool = False) -> None:
        missing = sorted(set(class_prompts) - set(top_k))
        if missing:
            raise ValueError(f"no top_k for class(es) {missing}")
        check_settings("retriever", CLIP_ACCEPTS, {"batch_size": batch_size, "workers": workers, "dedup_iou": dedup_iou,
                                                   "exclusive": exclusive})
        self.clip = clip
        self.classes = list(class_prompts)
        self.top_k = top_k
        self.batch_size = batch_size
        self.workers = workers if workers is not None else torch.get_num_threads()
        cache = getattr(clip, "embedding_cache", None)  # the same sentences in every trial of a tuning: once
        encode = clip.encode_texts if cache is None else lambda sentences: cache.texts(clip, sentences)
        self.prototypes = torch.stack([prototype(encode, sentences) for sentences in class_prompts.values()])  # (C, D)
        # Guards (issue 22), private so that the embedding cache's signature of the pictures ignores them.
        self._guards = RetrievalGuards(dedup_iou, exclusive)
        self._background = prototype(encode, BACKGROUND_SENTENCES)  # (D,): qc margin, exclusive retrieval

    def visual_prompt(self, image: np.ndarray, mask: np.ndarray, box: np.ndarray) -> np.ndarray:
        """The picture CLIP looks at for one candidate (``mask`` (H, W) bool, ``box`` XYXY inclusive)."""
        raise NotImplementedError

    def drawer(self, image: np.ndarray) -> Draw:
        """The per-image form of :meth:`visual_prompt`, built once per scored image."""
        return lambda mask, box: self.visual_prompt(image, mask, box)

    def prompt_signature(self) -> dict:
        """How a candidate becomes a picture: this retriever's class and its parameters (its public
        scalar attributes other than batching), the embedding cache's key for the visual prompt."""
        params = {k: v for k, v in vars(self).items()
                  if not k.startswith("_") and k not in ("batch_size", "workers", "classes") and _is_setting(v)}
        return {"kind": f"{type(self).__module__}.{type(self).__qualname__}", **params}

    def embeddings(self, image: np.ndarray, candidates: Candidates) -> torch.Tensor:
        """(N, D) CLIP embeddings of every candidate's visual prompt; those CLIP made before for this
        image, prompt and candidate come from its embedding cache."""
        draw = lazy_drawer(lambda: self.drawer(image))  # nothing drawn (no blur) when every embedding is cached

        def build(i: int) -> np.ndarray:
            return draw()(candidates.masks[i], candidates.boxes[i])

        cache = getattr(self.clip, "embedding_cache", None)
        if cache is None:
            return self.clip.encode_built(len(candidates), build, self.batch_size, self.workers)
        return cache.embed(self.clip, self.prompt_signature(), image, candidates.masks, candidates.boxes,
                           build, self.batch_size, self.workers)

    def scores(self, image: np.ndarray, candidates: Candidates) -> np.ndarray:
        """(N, C) cosine similarity of every candidate to every class prototype."""
        return self.scores_and_background(image, candidates)[:, :-1]

    def scores_and_background(self, image: np.ndarray, candidates: Candidates) -> np.ndarray:
        """(N, C + 1): :meth:`scores`, then each candidate's similarity to the background prototype."""
        embeddings = self.embeddings(image, candidates)  # two products: the class columns stay bit-identical
        return np.concatenate([similarities(embeddings, self.prototypes),
                               similarities(embeddings, self._background[None])], axis=1)

    def shared_scores(self, image: np.ndarray, candidates: Candidates) -> np.ndarray:
        """:meth:`scores_and_background`, memoised for the last (image, candidates) pair: the organs of one slice
        (``dataset.organs``) embed its candidates once and only read their own column."""
        memo = getattr(self, "_scores_memo", None)
        key = array_key(image)
        if memo is not None and memo[0] is candidates and memo[1] == key:
            return memo[2]
        similarity = self.scores_and_background(image, candidates)
        self._scores_memo = (candidates, key, similarity)  # holds the candidates: their id stays theirs
        return similarity

    def __call__(self, image: np.ndarray, candidates: Candidates, classes: list[str] | None = None) -> Retrieved:
        """Top-k candidates per class (``classes``: only those, e.g. one organ of a multi-organ run)."""
        if len(candidates) == 0:
            return Retrieved(candidates, [], np.zeros(0, np.float32), np.zeros(0, np.int64))
        both = (self.scores_and_background(image, candidates) if classes is None
                else self.shared_scores(image, candidates))
        # Every class competes (the exclusive guard compares them all); then only ``classes`` are kept.
        retrieved = retrieve_top_k(candidates, both[:, :-1], both[:, -1], self.classes, self.top_k, self._guards)
        return retrieved if classes is None else select_classes(retrieved, classes)


def similarities(embeddings: torch.Tensor, prototypes: torch.Tensor) -> np.ndarray:
    """(N, C) cosine similarities of L2-normalised rows, in float32 under bf16 autocast too."""
    with torch.autocast("cpu", enabled=False):
        return (embeddings.float() @ prototypes.float().T).numpy()


def prototype(encode: Callable[[list[str]], torch.Tensor], sentences: list[str]) -> torch.Tensor:
    """(D,) a class's text prototype: the mean of its sentences' normalised embeddings, re-normalised."""
    return torch.nn.functional.normalize(encode(list(sentences)).mean(dim=0), dim=0)


class PromptRetriever(ClipRetriever):
    """A :class:`ClipRetriever` whose pictures come from a registered visual-prompt function.

    ``prompt``: ``(image, **params) -> (mask, box) -> picture``; ``params``: its keyword arguments
    (the retriever's yaml keys besides batching). Holds no per-image state: what an image's
    candidates share (e.g. reverse_blur's blurred background) lives in the drawer of that image.
    """

    prompt: VisualPrompt  # set by register_visual_prompt on each registered subclass
    accepts: dict[str, Rule] = {}  # the prompt's parameters' rules (its module's ACCEPTS)

    def __init__(self, clip: ClipEngine, class_prompts: dict[str, list[str]], top_k: dict[str, int],
                 batch_size: int = 32, workers: int | None = None, dedup_iou: float | None = None,
                 exclusive: bool = False, **params: Any) -> None:
        super().__init__(clip, class_prompts, top_k, batch_size, workers, dedup_iou, exclusive)
        defaults = prompt_parameters(type(self).prompt)
        unknown = sorted(set(params) - set(defaults))
        if unknown:
            raise TypeError(f"retriever {type(self).registered_name!r}: unknown parameter(s) {unknown}")  # type: ignore[attr-defined]
        self.params = {**defaults, **params}
        check_settings("retriever", type(self).accepts, self.params)

    def drawer(self, image: np.ndarray) -> Draw:
        return type(self).prompt(image, **self.params)

    def visual_prompt(self, image: np.ndarray, mask: np.ndarray, box: np.ndarray) -> np.ndarray:
        return self.drawer(image)(mask, box)

    def prompt_signature(self) -> dict:
        """The embedding cache's key for the pictures: the prompt function and its parameters."""
        prompt = type(self).prompt
        return {"kind": f"{prompt.__module__}.{prompt.__qualname__}", **self.params}


def lazy_drawer(make: Callable[[], Draw]) -> Callable[[], Draw]:
    """``make()`` on the first call, from any of the prompt-building threads, and its result after."""
    made: list[Draw] = []
    lock = threading.Lock()

    def get() -> Draw:
        with lock:
            if not made:
                made.append(make())
        return made[0]
    return get


def prompt_parameters(prompt: VisualPrompt) -> dict[str, Any]:
    """``prompt``'s parameters after the image, each with its default (the one place it is set)."""
    params = list(inspect.signature(prompt).parameters.values())[1:]
    missing = [p.name for p in params if p.default is inspect.Parameter.empty]
    if missing:
        raise TypeError(f"visual prompt {prompt.__qualname__}: parameter(s) {missing} need a default")
    return {p.name: p.default for p in params}


def register_visual_prompt(name: str, prompt: VisualPrompt,
                           accepts: dict[str, Rule] | None = None) -> type[PromptRetriever]:
    """Register the retriever ``name`` whose pictures ``prompt`` draws; returns its class.

    Args:
        name: the registered name, also ``conf/retriever/<name>.yaml``.
        prompt: ``(image, **params) -> (mask, box) -> picture``; every parameter after the image has
            a default and becomes a config key of the retriever, checked by the strict registry.
        accepts: the rules of those parameters (the module's ``ACCEPTS``, which validation reads).
    """
    base = [p for p in inspect.signature(PromptRetriever).parameters.values() if p.kind is not p.VAR_KEYWORD]
    extra = [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=v)
             for k, v in prompt_parameters(prompt).items()]
    cls = type(f"{''.join(part.title() for part in name.split('_'))}Retriever", (PromptRetriever,),
               {"prompt": staticmethod(prompt), "__module__": prompt.__module__, "__doc__": prompt.__doc__,
                "__signature__": inspect.Signature(base + extra),
                "accepts": {k: v for k, v in (accepts or {}).items() if k not in CLIP_ACCEPTS}})
    return RETRIEVERS.register(name)(cls)
