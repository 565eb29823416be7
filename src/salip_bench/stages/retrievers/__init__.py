"""Stage 3 of SaLIP: pick the candidates that match the organ's description. One file per retriever."""
from salip_bench.stages.retrievers import box, contour, crop, crop_expand, reverse_blur  # noqa: F401
