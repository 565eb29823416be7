"""Engines: the models behind the stages, one ``<family>_engine.py`` per registered engine.

The kit: ``base.py`` (what every engine shares: identity, counters, memos), ``memo.py`` (the one
per-image memo, in memory and on disk), ``weights.py`` (the one weights resolver and identity),
``builder.py`` (the one way to build an engine: registry, reuse across jobs, cache), ``roles.py``
(what a stage may ask of an engine). ``<family>_model.py`` modules build a family's networks.
Stage plugins call only role methods. This layer imports nothing above it.
"""
from salip_bench.engines import biomedclip_engine, clip_engine, medsam_engine, sam2_engine, sam3_engine, sam_engine  # noqa: F401
