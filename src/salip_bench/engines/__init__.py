"""Engines by role: each owns its weights, caches and work counters; stage plugins only call them."""
from salip_bench.engines import biomedclip, clip_engine, sam3  # noqa: F401
