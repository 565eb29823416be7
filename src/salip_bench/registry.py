"""One registry mechanism, one registry per plugin kind.

A plugin is a class registered under a name with a decorator::

    @RETRIEVERS.register("grey_box")
    class GreyBoxRetriever(ClipRetriever): ...

(built-in retrievers use the helper ``register_visual_prompt``, which registers one the same way),
and built from its config group entry (``conf/<kind>/<name>.yaml``), whose ``name`` key picks
the class and whose other keys are its constructor kwargs. Runtime objects that no yaml can hold
(the SAM model, the CLIP model, the organ's sentences, top-k) are injected by parameter name: a
plugin receives ``sam`` if its ``__init__`` declares a ``sam`` parameter, and so on.

Third-party packages add plugins through the ``salip_bench.plugins`` entry-point group: each entry
point names a module (or callable) that registers its plugins when imported (called).
"""
from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from omegaconf import DictConfig, OmegaConf

ENTRY_POINT_GROUP = "salip_bench.plugins"
T = TypeVar("T")


class PluginError(ValueError):
    """A plugin could not be found or its config does not fit its constructor."""


class Lazy:
    """A context value built on first use and then reused (e.g. SAM, built only if a plugin asks)."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._factory = factory
        self._built = False
        self._value: Any = None

    def __call__(self) -> Any:
        if not self._built:
            self._value = self._factory()
            self._built = True
        return self._value

    @property
    def built(self) -> bool:
        return self._built


class Registry(Generic[T]):
    """Name → class table for one plugin kind (generator, filter, retriever, ...)."""

    def __init__(self, kind: str, settings: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.settings = settings  # keys of this kind's config group that the run reads, not the plugin
        self._classes: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        """Class decorator: ``@GENERATORS.register("sam_everything")``.

        Args:
            name: the plugin's name, as configs write it (``name:`` of its yaml).

        Raises:
            PluginError: another class already holds ``name``.
        """
        def decorator(cls: type[T]) -> type[T]:
            if name in self._classes and self._classes[name] is not cls:
                raise PluginError(f"{self.kind} plugin {name!r} is already registered by "
                                  f"{self._classes[name].__module__}.{self._classes[name].__name__}")
            self._classes[name] = cls
            cls.registered_name = name  # type: ignore[attr-defined]
            return cls
        return decorator

    def names(self) -> list[str]:
        """The registered names, sorted (every plugin module imported first)."""
        load_plugins()
        return sorted(self._classes)

    def get(self, name: str) -> type[T]:
        """The class registered as ``name``.

        Raises:
            PluginError: no such plugin; the message lists the known ones.
        """
        load_plugins()
        if name not in self._classes:
            raise PluginError(f"unknown {self.kind} {name!r}; known {self.kind}s: {', '.join(self.names())}")
        return self._classes[name]

    def build(self, cfg: Mapping[str, Any] | DictConfig, **context: Any) -> T:
        """Build the plugin named by ``cfg.name`` with the other keys as keyword arguments.

        Args:
            cfg: the plugin's config (``name`` plus constructor arguments), plain or DictConfig.
                This kind's ``settings`` keys are left out (they are read elsewhere).
            **context: runtime objects (engines, prompts); each is passed only if the constructor
                declares it, and none may also be set in ``cfg``.

        Returns:
            The plugin instance.

        Raises:
            PluginError: no ``name``, an unknown plugin, or a key the constructor does not accept
                (a typo must not be ignored silently).
        """
        if isinstance(cfg, DictConfig):
            cfg = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
        kwargs = {k: v for k, v in cfg.items() if k not in self.settings}
        if "name" not in kwargs:
            raise PluginError(f"{self.kind} config has no 'name' key: {kwargs}")
        name = kwargs.pop("name")
        cls = self.get(name)
        params = inspect.signature(cls).parameters  # the constructor's, without self
        takes_var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
        accepted = [p for p in params if params[p].kind is not inspect.Parameter.VAR_KEYWORD]
        clashing = sorted(set(kwargs) & set(context))
        if clashing:
            raise PluginError(f"{self.kind} {name!r}: {clashing} are provided at run time and cannot be set in config")
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown and not takes_var_kw:
            settable = sorted(set(accepted) - set(context))
            raise PluginError(f"{self.kind} {name!r} got unknown config key(s) {unknown}; "
                              f"accepted keys: {settable}")
        injected = {k: (v() if isinstance(v, Lazy) else v) for k, v in context.items()
                    if k in params or takes_var_kw}
        return cls(**kwargs, **injected)


GENERATORS: Registry = Registry("generator")
FILTERS: Registry = Registry("filter")
RETRIEVERS: Registry = Registry("retriever")
REFINERS: Registry = Registry("refiner")
# The dataset group's run settings (salip_bench.datasets.settings.DatasetSettings): in its yaml, not its class.
DATASET_SETTINGS = ("prompts", "top_k", "max_side", "extra_metrics")
DATASETS: Registry = Registry("dataset", settings=DATASET_SETTINGS)
METHODS: Registry = Registry("method")
# Quality estimators (salip_bench.qc): the run reads abstain_below and failure_dice, not the plugin.
QC_SETTINGS = ("abstain_below", "failure_dice")
QC: Registry = Registry("qc", settings=QC_SETTINGS)
ENGINES: Registry = Registry("engine")  # name -> builder(cfg, weights, key) -> engine (engines/builder.py)
REGISTRIES: dict[str, Registry] = {r.kind: r for r in (GENERATORS, FILTERS, RETRIEVERS, REFINERS, DATASETS, METHODS)}

_BUILTIN_MODULES = ("salip_bench.engines", "salip_bench.stages", "salip_bench.datasets", "salip_bench.methods",
                   "salip_bench.qc")
_loaded = False


def load_plugins() -> None:
    """Import the built-in plugin packages and every ``salip_bench.plugins`` entry point, once."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        obj = ep.load()
        if callable(obj) and not inspect.ismodule(obj):
            obj()
