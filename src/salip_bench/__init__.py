"""salip_bench: zero-shot medical image segmentation with SAM + CLIP (SaLIP), as a benchmark harness."""
from importlib import resources

from omegaconf import OmegaConf

__version__ = "0.1.0"

# ${package_dir:demo/hc18} in the configs: a folder shipped inside the installed package. Registered
# here so every entry point (run, train, tune) and every test that composes the configs has it.
OmegaConf.register_new_resolver("package_dir", lambda sub: str(resources.files("salip_bench") / sub), replace=True)
