"""SAM 2.1 models (Hiera tiny / small / base+ / large) from Meta's official ``sam2`` package, and their weights.

Official package rather than HF ``transformers``' port: it loads the released ``.pt`` files
(``{"model": state_dict}``) as they are, and its own predictor and automatic mask generator are
the reference our masks must equal (tests/test_engines_sam2.py). The model is instantiated from
the package's architecture yaml with OmegaConf and ``hydra.utils.instantiate``, not with Hydra's
``compose``: composing needs sam2's config module in Hydra's *global* state, which inside a
``salip-bench`` run or multirun belongs to our own config (see ``engines/hydra_guard.py``).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from salip_bench.engines.weights import load_state_dict

# What official build_sam2(..., apply_postprocessing=True) adds to every image model: fall back to
# the multimask output when the single mask is unstable.
POSTPROCESSING = {"dynamic_multimask_via_stability": True, "dynamic_multimask_stability_delta": 0.05,
                  "dynamic_multimask_stability_thresh": 0.98}
INSTALL_HINT = ("the sam2 package is missing: pip install -e . (it builds sam2==1.1.0 from its sdist; "
                "SAM2_BUILD_CUDA=0 pip install --no-build-isolation sam2==1.1.0 builds it without the CUDA extension)")


def sam2_model_config(cfg: dict) -> DictConfig:
    """The instantiable ``model`` config of a ``conf/model/sam2_*.yaml`` entry.

    Args:
        cfg: the entry: ``config`` names an architecture yaml of the sam2 package
            (``sam2.1/sam2.1_hiera_l`` etc.), ``arch_overrides`` maps dotted keys under ``model``
            to new values (how ``sam2_tiny`` shrinks the real classes).
    """
    if importlib.util.find_spec("sam2") is None:
        raise ModuleNotFoundError(INSTALL_HINT)
    # Reading the yaml through importlib.resources imports no sam2 module (and so no Hydra state).
    root = Path(next(iter(importlib.util.find_spec("sam2").submodule_search_locations)))
    model = OmegaConf.load(root / "configs" / f"{cfg['config']}.yaml").model
    OmegaConf.update(model, "sam_mask_decoder_extra_args", POSTPROCESSING, force_add=True)
    for key, value in (cfg.get("arch_overrides") or {}).items():
        OmegaConf.update(model, key, value, force_add=True)
    OmegaConf.resolve(model)
    return model


def build_sam2_model(cfg: dict) -> torch.nn.Module:
    """An untrained SAM 2 image/video model of the entry's architecture (``SAM2Base``).

    Args:
        cfg: a ``conf/model/sam2_*.yaml`` entry.
    """
    from hydra.utils import instantiate

    from salip_bench.engines.hydra_guard import import_leaving_hydra_alone

    import_leaving_hydra_alone("sam2")  # its __init__ would otherwise initialise Hydra for good
    return instantiate(sam2_model_config(cfg), _recursive_=True)


def load_sam2_checkpoint(model: torch.nn.Module, path: object) -> None:
    """Load an official SAM 2 ``.pt`` (a dict whose ``"model"`` is the state dict), strictly.

    Args:
        model: what :func:`build_sam2_model` built.
        path: the checkpoint file.
    """
    state = load_state_dict(path, "SAM 2.1")
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"{path} is not a SAM 2 checkpoint (expected a dict with key 'model')")
    model.load_state_dict(state["model"])
