"""Engines: the models behind the stages, one file per engine, each registered in ``ENGINES``.

An engine owns its weights, its memo of image features and its work counters, and offers one or
more roles (``engines/roles.py``); stage plugins call only those role methods. This layer imports
nothing above it (no stage, method or harness module).
"""
from salip_bench.engines import biomedclip, clip_engine, medsam, sam, sam2, sam3  # noqa: F401
