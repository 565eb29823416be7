"""salip_bench: zero-shot medical image segmentation with SAM + CLIP (SaLIP), as a benchmark harness."""
__version__ = "0.1.0"
