"""The ``qc`` section's thresholds, checked cheaply (no plugin imported) so that a bad value stops a
run in one line before any model or network library loads."""
from __future__ import annotations

import math
from collections.abc import Mapping

from salip_bench.registry import PluginError

DEFAULT_FAILURE_DICE = 0.5


class QualityConfigError(PluginError):
    """A ``qc`` setting that cannot work (a threshold out of range, an estimator that does not fit)."""


def unit_interval(key: str, value: object, allow_none: bool) -> float | None:
    """``value`` as a float in [0, 1] (None allowed if ``allow_none``), else a one-line error naming ``key``.

    Args:
        key: the config key, for the message.
        value: the configured value.
        allow_none: whether null means "off".
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0.0 <= value <= 1.0:
        expected = "a number in [0, 1]" + (" or null" if allow_none else "")
        raise QualityConfigError(f"{key}={value!r}: expected {expected}")
    return float(value)


def check_qc_settings(cfg: Mapping) -> tuple[float | None, float]:
    """``qc.abstain_below`` (None: no abstention) and ``qc.failure_dice``, each in [0, 1].

    Args:
        cfg: the run config (no ``qc`` section: no abstention, the default failure Dice).
    """
    qc = cfg.get("qc")
    if not isinstance(qc, Mapping):
        return None, DEFAULT_FAILURE_DICE
    return (unit_interval("qc.abstain_below", qc.get("abstain_below"), allow_none=True),
            unit_interval("qc.failure_dice", qc.get("failure_dice", DEFAULT_FAILURE_DICE), allow_none=False))
