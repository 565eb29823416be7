"""The ``qc`` config group: which estimator a run uses, its threshold, and the one-line refusals.

``qc=auto`` (the default) takes the method's own default estimator (``default_qc`` on its class;
a method without one, such as ``oracle``, which picks with the ground truth, gets no quality);
``qc=none`` turns quality off; any other name is a registered estimator, refused when the method
cannot give the signals it needs.
"""
from __future__ import annotations

from collections.abc import Mapping

from salip_bench.qc.base import fitting
from salip_bench.qc.gate import QualityGate
from salip_bench.qc.settings import QualityConfigError, check_qc_settings
from salip_bench.registry import METHODS, QC, QC_SETTINGS

AUTO, NONE = "auto", "none"  # config-only names: the method's default, no estimator


def fitting_estimators(method: type) -> list[str]:
    """The registered estimators whose signals ``method`` gives."""
    offered = getattr(method, "qc_signals", ())
    return [name for name in QC.names() if fitting(QC.get(name).requires, offered)]


def estimator_name(qc: Mapping, method_name: str) -> str | None:
    """The estimator a run uses (None: no quality), checked against the method.

    Args:
        qc: the ``qc`` config section.
        method_name: the registered method.

    Raises:
        QualityConfigError: the estimator does not fit the method (the message lists those that do).
    """
    method = METHODS.get(method_name)
    name = qc.get("name", AUTO)
    if name == NONE:
        return None
    if name == AUTO:
        return getattr(method, "default_qc", None)
    needed = QC.get(name).requires
    if not fitting(needed, getattr(method, "qc_signals", ())):
        fits = fitting_estimators(method)
        why = getattr(method, "qc_note", None)
        raise QualityConfigError(
            f"qc={name} needs {', '.join(needed)}, which method={method_name} does not give; "
            + (f"estimators that fit {method_name}: {', '.join(fits)}" if fits
               else f"no estimator fits {method_name}" + (f" ({why})" if why else "")) + " (or qc=auto / qc=none)")
    return name


def check_qc(cfg: Mapping) -> None:
    """Every refusal of the ``qc`` section, before any model is loaded (one line each).

    Args:
        cfg: the run config (a config without ``qc`` is fine: quality off).
    """
    qc = cfg.get("qc")
    if not isinstance(qc, Mapping):
        return
    threshold, _ = check_qc_settings(cfg)
    name = estimator_name(qc, cfg["method"]["name"]) if isinstance(cfg.get("method"), Mapping) else None
    if threshold is not None and name is None:
        raise QualityConfigError(f"qc.abstain_below={threshold} needs a quality score, but method="
                                 f"{cfg['method']['name']} with qc={qc.get('name', AUTO)} has none")


def build_gate(cfg: Mapping) -> QualityGate | None:
    """The run's :class:`~salip_bench.qc.gate.QualityGate` (None: no quality for this method / config).

    Args:
        cfg: the resolved run config.
    """
    qc = cfg.get("qc")
    if not isinstance(qc, Mapping):
        return None
    check_qc(cfg)
    name = estimator_name(qc, cfg["method"]["name"])
    if name is None:
        return None
    params = {k: v for k, v in qc.items() if k not in QC_SETTINGS}
    if params.get("name") in (AUTO, NONE):
        params = {"name": name}  # the method's default estimator, with its defaults
    estimator = QC.build({**params, "name": name})
    return QualityGate(estimator, qc.get("abstain_below"))
