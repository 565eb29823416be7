"""What a setting accepts, declared once next to the code that reads it.

A plugin module declares ``ACCEPTS = {key: rule}`` with the rules below; its constructor checks its
arguments with :func:`check_settings`, and the command line's validation reads the same declaration
from the module's source (:func:`read_accepts`) without importing it, so a bad setting is refused
before torch is imported. A rule failing is one :class:`ConfigError` line: key, value, what is expected.
"""
from __future__ import annotations

import ast
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PACKAGE = Path(__file__).resolve().parent
MISSING = "???"  # omegaconf's marker of a required value, as a resolved config holds it


class ConfigError(ValueError):
    """A setting that cannot work; the message is one line: key, value, what is expected."""


@dataclass(frozen=True)
class Rule:
    """A test of one setting's value and how to say what it expects."""

    def accepts(self, value: Any) -> bool:
        raise NotImplementedError

    @property
    def expected(self) -> str:
        raise NotImplementedError

    def check(self, key: str, value: Any) -> None:
        """Raise :class:`ConfigError` naming ``key`` unless ``value`` is accepted."""
        if value == MISSING:
            raise ConfigError(f"{key} is required (it is ???): expected {self.expected}")
        if not self.accepts(value):
            raise ConfigError(f"{key}={value!r}: expected {self.expected}")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and value == value  # not NaN


@dataclass(frozen=True)
class NumberIn(Rule):
    """A number (not NaN, not a bool; an integer if ``integer``) between ``low`` and ``high``
    (``inf``: no upper bound)."""

    low: float
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    integer: bool = False

    def accepts(self, value: Any) -> bool:
        if not (_is_int(value) if self.integer else _is_real(value)):
            return False
        above = value > self.low if self.low_open else value >= self.low
        return above and (value < self.high if self.high_open else value <= self.high)

    @property
    def expected(self) -> str:
        what = "an integer" if self.integer else "a number"
        if self.high == math.inf:
            return f"{what} {'>' if self.low_open else '>='} {self.low:g}"
        return f"{what} in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"


def IntAtLeast(low: int) -> NumberIn:
    """An integer >= ``low`` (not a bool)."""
    return NumberIn(low, integer=True)


def Positive() -> NumberIn:
    """A number > 0 (rules are written as calls in ``ACCEPTS``, factories like classes)."""
    return NumberIn(0.0, low_open=True)


def Flag() -> OneOf:
    """true or false."""
    return OneOf(True, False)


@dataclass(frozen=True)
class OneOf(Rule):
    """One of fixed values, of the same type (``1`` does not stand for ``True``, nor ``True`` for ``1``)."""

    values: tuple

    def __init__(self, *values: Any) -> None:
        object.__setattr__(self, "values", values)

    def accepts(self, value: Any) -> bool:
        return any(type(value) is type(v) and value == v for v in self.values)

    @property
    def expected(self) -> str:
        names = [str(v).lower() if isinstance(v, bool) else str(v) for v in self.values]
        return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


@dataclass(frozen=True)
class Nullable(Rule):
    rule: Rule

    def accepts(self, value: Any) -> bool:
        return value is None or self.rule.accepts(value)

    @property
    def expected(self) -> str:
        return f"null or {self.rule.expected}"


@dataclass(frozen=True)
class ByKey(Rule):
    """A rule chosen by another setting of the same section (``filter.max_area`` by ``filter.unit``)."""

    key: str
    default: Any
    rules: Mapping[str, Rule]

    def pick(self, section: Mapping[str, Any]) -> Rule | None:
        return self.rules.get(section.get(self.key, self.default))


UNIT = NumberIn(0.0, 1.0)
# ``weights=``: every engine builder and the command line read this one rule.
WEIGHTS = OneOf("pretrained", "random")


def check_settings(prefix: str, accepts: Mapping[str, Rule], section: Mapping[str, Any]) -> None:
    """Check the keys of ``section`` that ``accepts`` declares (others are left to their readers).

    Args:
        prefix: the config group, for the message (``filter`` → ``filter.max_area=…``).
        accepts: the plugin's ``ACCEPTS``.
        section: its settings (a config section, or a constructor's arguments).

    Raises:
        ConfigError: the first value its rule refuses, in one line.
    """
    for key, rule in accepts.items():
        if isinstance(rule, ByKey):
            rule = rule.pick(section)  # an unknown selector is its own key's error
        if rule is not None and key in section:
            rule.check(f"{prefix}.{key}", section[key])


_RULES = {rule.__name__: rule for rule in (IntAtLeast, NumberIn, Positive, Flag, OneOf, Nullable, ByKey)}
_CONSTANTS = {"UNIT": UNIT, "WEIGHTS": WEIGHTS}


def read_accepts(module: str, name: str = "ACCEPTS") -> dict[str, Rule]:
    """A module's ``ACCEPTS`` declaration, read from its source without importing it (and so without
    torch); ``{}`` when the module or the declaration does not exist.

    The declaration is a dict of rule constructors, literals, :data:`UNIT` and ``**OTHER``, where
    ``OTHER`` is imported from another ``salip_bench`` module (a retriever's ``**CLIP_ACCEPTS``).

    Args:
        module: a dotted ``salip_bench`` module name.
        name: the declaration's name in it.
    """
    path = PACKAGE.joinpath(*module.split(".")[1:]).with_suffix(".py")
    if not path.is_file():
        return {}
    tree = ast.parse(path.read_text(), str(path))
    imported = {alias.asname or alias.name: (node.module, alias.name) for node in tree.body
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("salip_bench.")
                for alias in node.names}
    for node in tree.body:
        target = node.target if isinstance(node, ast.AnnAssign) else (node.targets[0] if isinstance(node, ast.Assign)
                                                                       else None)
        if isinstance(target, ast.Name) and target.id == name and node.value is not None:
            return _evaluate(node.value, imported)
    return {}


def _evaluate(node: ast.expr, imported: dict[str, tuple[str, str]]) -> Any:
    if isinstance(node, ast.Dict):
        out: dict = {}
        for key, value in zip(node.keys, node.values):
            if key is None:  # **OTHER, imported from another module
                if not isinstance(value, ast.Name) or value.id not in imported:
                    raise ValueError(f"ACCEPTS: cannot read **{ast.unparse(value)}")
                out.update(read_accepts(*imported[value.id]))
            else:
                out[_evaluate(key, imported)] = _evaluate(value, imported)
        return out
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _RULES:
        args = [_evaluate(a, imported) for a in node.args]
        return _RULES[node.func.id](*args, **{k.arg: _evaluate(k.value, imported) for k in node.keywords})
    if isinstance(node, ast.Name) and node.id in _CONSTANTS:
        return _CONSTANTS[node.id]
    return ast.literal_eval(node)
