"""How a CAM method declares itself: one ``@method_spec(MethodSpec(...))`` above its class.

The declaration is the single source of a method's name, aliases, cost and constructor options;
``onnxcam.registry``, ``onnxcam methods`` and the CLI's option parsing all read it.

This module imports nothing from onnxcam on purpose: the explainer modules import it for the
decorator, and ``onnxcam.registry`` imports the explainer modules to fill the table, so any onnxcam
import here would close a cycle.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

__all__ = [
    "CLASSES",
    "COST_CLASSES",
    "SLOW_COST_CLASSES",
    "CostClass",
    "MethodOption",
    "MethodSpec",
    "Requirement",
    "applies",
    "declared_spec",
    "forget",
    "method_spec",
    "option_mismatches",
    "requirement_error",
    "specs",
    "unmet",
]

CostClass = Literal["forward", "backward", "full backward", "sampled backward", "per-channel forwards",
                    "per-channel head runs"]
COST_CLASSES: tuple[str, ...] = ("forward", "backward", "full backward", "sampled backward", "per-channel forwards",
                                 "per-channel head runs")
#: Cost classes whose run time grows with the channel count or sample count: hundreds of runs per image.
SLOW_COST_CLASSES = frozenset({"per-channel forwards", "per-channel head runs"})

OptionType = type[int] | type[float] | type[bool] | type[str]


@dataclass(frozen=True)
class MethodOption:
    """A constructor keyword a user may set (``--option METHOD.NAME=VALUE`` on the command line).

    ``default`` must equal the constructor's default (a test checks it); ``minimum`` bounds numbers
    (None: unbounded).
    """

    name: str
    type: OptionType
    default: Any
    help: str
    minimum: float | None = None


@dataclass(frozen=True)
class Requirement:
    """What a model must have for a method to apply to it (most methods need nothing beyond a
    feature map and declare no requirement).

    ``name`` is the short word ``onnxcam methods`` shows; ``description`` completes "needs ..." in
    the error a model without it gets; ``check(model)`` (an ``onnxcam.Model``) says whether the model
    has it. ``check`` may run the model once, so callers ask through ``unmet`` / ``applies`` only for
    the methods they are about to use.
    """

    name: str
    description: str
    check: Callable[[Any], bool]


@dataclass(frozen=True)
class MethodSpec:
    """What a method is called, what it costs and what it needs. ``cost`` is the text shown by
    ``onnxcam methods``; ``cost_class`` (one of ``COST_CLASSES``) is what tools reason with, e.g.
    whether a run is slow; ``requires``: what a model must have for the method to apply (empty: every
    model with a feature map)."""

    name: str
    cost: str
    cost_class: CostClass
    uses_gradients: bool
    aliases: tuple[str, ...] = ()
    options: tuple[MethodOption, ...] = ()
    requires: tuple[Requirement, ...] = ()

    def __post_init__(self) -> None:
        if self.cost_class not in COST_CLASSES:
            raise ValueError(f"MethodSpec {self.name!r}: cost_class {self.cost_class!r} is not one of "
                             f"{', '.join(COST_CLASSES)}")
        names = [o.name for o in self.options]
        if len(set(names)) != len(names):
            raise ValueError(f"MethodSpec {self.name!r} declares an option twice: {names}")

    @property
    def slow(self) -> bool:
        return self.cost_class in SLOW_COST_CLASSES

    def option(self, name: str) -> MethodOption | None:
        return next((o for o in self.options if o.name == name), None)

    @property
    def applies_to(self) -> str:
        """The requirements in words ("" when the method applies to every model)."""
        return ", ".join(r.description for r in self.requires)


#: Declared classes by method name, in declaration order. ``onnxcam.registry.METHODS`` is this dict.
CLASSES: dict[str, type] = {}
_SPECS: dict[str, MethodSpec] = {}
_TAKEN: dict[str, str] = {}  # every name and alias -> the method name it stands for

C = TypeVar("C", bound=type)


def method_spec(spec: MethodSpec) -> Callable[[C], C]:
    """Class decorator: declare ``spec`` for the class below and add it to the method table.

    Sets the class's ``name`` and ``uses_gradients`` from the spec; a class body that states them
    differently, or a name or alias another class already has, raises TypeError at import.
    """

    def declare(cls: C) -> C:
        if "__method_spec__" in cls.__dict__ and cls.__dict__["__method_spec__"] is not spec:
            raise TypeError(f"{_qualname(cls)} carries two method declarations; keep one")
        _check_class_attributes(spec, cls)
        previous = CLASSES.get(spec.name)
        if previous is not None and _qualname(previous) != _qualname(cls):  # a module reload redeclares
            raise TypeError(f"method {spec.name!r} is declared by both {_qualname(previous)} and {_qualname(cls)}")
        for key in (spec.name, *spec.aliases):
            owner = _TAKEN.get(key)
            if owner is not None and owner != spec.name:
                raise TypeError(f"{_qualname(cls)}: name {key!r} already stands for method {owner!r}")
        cls.name = spec.name  # type: ignore[attr-defined]
        cls.uses_gradients = spec.uses_gradients  # type: ignore[attr-defined]
        cls.__method_spec__ = spec  # type: ignore[attr-defined]
        CLASSES[spec.name] = cls
        _SPECS[spec.name] = spec
        _TAKEN.update(dict.fromkeys((spec.name, *spec.aliases), spec.name))
        return cls

    return declare


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _check_class_attributes(spec: MethodSpec, cls: type) -> None:
    own = cls.__dict__
    for attr, declared in (("name", spec.name), ("uses_gradients", spec.uses_gradients)):
        if attr in own and own[attr] != declared:
            raise TypeError(f"{_qualname(cls)}.{attr} is {own[attr]!r} but its MethodSpec says {declared!r}; "
                            "the declaration is the source: drop the class attribute or make them agree")


def forget(name: str) -> None:
    """Remove method ``name`` from the table (a declaration made for a test or a notebook experiment)."""
    CLASSES.pop(name, None)
    spec = _SPECS.pop(name, None)
    for key in (name, *(spec.aliases if spec else ())):
        _TAKEN.pop(key, None)


def specs() -> dict[str, MethodSpec]:
    """Every declaration by method name, in declaration order."""
    return dict(_SPECS)


def declared_spec(cls: type) -> MethodSpec | None:
    """The spec declared on ``cls`` itself (not inherited from a declared base), or None."""
    spec = cls.__dict__.get("__method_spec__")
    return spec if isinstance(spec, MethodSpec) else None


def option_mismatches(spec: MethodSpec, cls: type) -> list[str]:
    """Where ``spec.options`` disagree with ``cls.__init__``: a missing keyword or another default."""
    params = inspect.signature(cls.__init__).parameters  # type: ignore[misc]
    problems = []
    for opt in spec.options:
        p = params.get(opt.name)
        if p is None or p.kind not in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD):
            problems.append(f"{spec.name}: option {opt.name!r} is not a keyword of {cls.__qualname__}.__init__")
        elif p.default != opt.default or type(p.default) is not type(opt.default):
            problems.append(f"{spec.name}: option {opt.name!r} defaults to {opt.default!r} in its MethodSpec but "
                            f"{p.default!r} in {cls.__qualname__}.__init__")
    return problems


def unmet(spec: MethodSpec, model: Any) -> list[Requirement]:
    """The requirements of ``spec`` that ``model`` (an ``onnxcam.Model``) lacks."""
    return [r for r in spec.requires if not r.check(model)]


def applies(method: MethodSpec | type, model: Any) -> bool:
    """Whether the method (its spec, or a declared class) applies to ``model``: it has every requirement."""
    spec = method if isinstance(method, MethodSpec) else getattr(method, "__method_spec__", None)
    return not isinstance(spec, MethodSpec) or not unmet(spec, model)


def requirement_error(cls: type, model: Any) -> str | None:
    """The one-line refusal for running ``cls`` on ``model`` when the model lacks a requirement of the
    method (None when it has them all): what is needed, and the declared methods that do apply."""
    spec = getattr(cls, "__method_spec__", None)
    if not isinstance(spec, MethodSpec):
        return None
    missing = unmet(spec, model)
    if not missing:
        return None
    working = [s.name for s in _SPECS.values() if s.name != spec.name and not unmet(s, model)]
    name = getattr(model, "name", "the model")
    # Only the methods declared so far are known here (the registry imports them all): with none of
    # them applying, the message points at the full list instead of claiming nothing works.
    works = f"methods that work on it: {', '.join(working)} (see `onnxcam methods`)" if working else \
        "`onnxcam methods` lists the methods that work on it"
    return f"{spec.name} needs {'; '.join(r.description for r in missing)}, and {name} has none; {works}"
