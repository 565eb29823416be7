"""Import a library that initialises Hydra's global state on import, without letting it stay so.

``sam2`` (and possibly ``sam3``) call ``initialize_config_module`` in their package ``__init__``
when Hydra is not initialised yet (upstream sam2 issues #179, #701). Left initialised, that state
makes a later ``hydra.main`` or ``initialize_config_dir`` (tests, ``salip-bench -m``) fail with
"GlobalHydra is already initialized". Inside a running ``salip-bench`` job Hydra is already
initialised with our config, so the import leaves it alone; we build the models without Hydra's
``compose`` (see ``engines/sam2_model.py``), so neither state needs the library's config module.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from hydra.core.global_hydra import GlobalHydra


def import_leaving_hydra_alone(module: str) -> ModuleType:
    """``importlib.import_module(module)``; Hydra's global state is as it was before.

    Args:
        module: dotted module name, e.g. ``sam2.sam2_image_predictor``.
    """
    hydra = GlobalHydra.instance()
    was_initialized = hydra.is_initialized()
    try:
        return importlib.import_module(module)
    finally:
        if not was_initialized and hydra.is_initialized():
            hydra.clear()
