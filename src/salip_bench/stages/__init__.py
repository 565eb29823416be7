"""The four stages of the SaLIP cascade, thin plugins over the engines: generators, filters, retrievers, refiners."""
from salip_bench.stages import filters, generators, refiners, retrievers  # noqa: F401 - registers the plugins
