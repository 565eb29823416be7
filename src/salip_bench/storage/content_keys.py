"""Content keys of arrays for the caches, and a scope in which each image is hashed only once.

A sample's image is looked up by several caches (SAM's embeddings and proposals, CLIP's
embeddings) and by the refiner's ``set_image``. Hashing a large image is a full pass over its
bytes each time; inside :func:`hashed_once` an image *object* is hashed once and its key reused. The scope
exists because the reuse is only sound while nobody writes into the array: the harness opens it
around one sample's method call (the pipeline never modifies a sample's image), and outside it
every call hashes the bytes again.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import numpy as np

_memo: ContextVar[dict[int, tuple[np.ndarray, str]] | None] = ContextVar("image_keys", default=None)


def array_key(array: np.ndarray, digest_size: int = 16) -> str:
    """Content key of an array: its shape, dtype and bytes."""
    digest = hashlib.blake2b(digest_size=digest_size)
    digest.update(f"{array.shape}{array.dtype}".encode())
    digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


def image_key(image: np.ndarray) -> str:
    """Content key of an image array (shape, dtype and bytes); computed once per image object inside
    :func:`hashed_once`."""
    memo = _memo.get()
    if memo is None:
        return array_key(image)
    held = memo.get(id(image))
    if held is None or held[0] is not image:  # the id of a freed array can be reused: compare the object
        held = memo[id(image)] = (image, array_key(image))
    return held[1]


@contextmanager
def hashed_once() -> Iterator[None]:
    """A scope in which :func:`image_key` hashes each image object once (nested scopes share the outer
    one's keys). Only for images nobody modifies while it is open."""
    if _memo.get() is not None:
        yield
        return
    token = _memo.set({})
    try:
        yield
    finally:
        _memo.reset(token)
