"""The resume fingerprint: a hash of everything that changes a run's predictions.

That is the semantic config (:func:`salip_bench.config_keys.semantic_config`, the rule the report
shares) and the contents of the files a plugin says its predictions depend on: a plugin class may
declare ``prediction_files(entry) -> {config key: path}`` (the U-Net method names its checkpoint), so
a retrained checkpoint at the same path is not mistaken for the old one on resume. The fingerprint
knows no plugin's files itself.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

from salip_bench.config_keys import semantic_config
from salip_bench.engines.weights import file_sha256
from salip_bench.registry import REGISTRIES, PluginError


def prediction_files(cfg: Mapping) -> dict[str, Path]:
    """The existing files the configured plugins declare, by fingerprint key ``<group>_<key>_sha256``.

    A declared file that does not exist is left out: building its plugin fails on it with the
    plugin's own message. So is an unregistered plugin: its build names it (a resume with every
    sample done builds nothing and still finalizes).

    Args:
        cfg: the resolved run config.
    """
    files = {}
    for group, registry in REGISTRIES.items():
        entry = cfg.get(group)
        if not isinstance(entry, Mapping) or "name" not in entry:
            continue
        try:
            declare = getattr(registry.get(entry["name"]), "prediction_files", None)
        except PluginError:
            continue
        for key, path in (declare(entry) if declare is not None else {}).items():
            if Path(path).is_file():
                files[f"{group}_{key}_sha256"] = Path(path)
    return files


def config_fingerprint(cfg: Mapping) -> str:
    """16 hex digits of the sha256 of :func:`semantic_config` plus the :func:`prediction_files`' contents.

    Args:
        cfg: the resolved run config.
    """
    semantic = semantic_config(dict(cfg))
    semantic.update({key: file_sha256(path) for key, path in prediction_files(cfg).items()})
    return hashlib.sha256(json.dumps(semantic, sort_keys=True, default=str).encode()).hexdigest()[:16]
