from salip_bench.engines import biomedclip, clip_engine, sam3  # noqa: F401
