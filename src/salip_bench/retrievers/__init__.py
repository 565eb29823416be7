"""Stage 3 of SaLIP: pick the candidates that match the organ's description. One file per retriever."""
from salip_bench.retrievers import crop  # noqa: F401
