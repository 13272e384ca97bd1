"""Method names as users type them -> CAM classes, what each costs, and their options.

Everything here is derived from the ``@method_spec(MethodSpec(...))`` declarations above the
explainer classes (see ``onnxcam.method_specs``); importing the explainer modules fills the table.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from onnxcam.errors import ArgumentError
from onnxcam.explainers import gradient, perturbation, structural  # noqa: F401  # their decorators fill CLASSES

# isort: split
# Declared after the methods that work on every model, so tables and error messages list those first.
from onnxcam.explainers import attention  # noqa: F401
from onnxcam.method_specs import CLASSES, COST_CLASSES, MethodOption, MethodSpec, applies, declared_spec, specs

if TYPE_CHECKING:
    from onnxcam.explainers.base import BaseCAM

#: Method name -> class. The same dict the declarations fill, so a method declared later (a user's
#: own, see the README's "Extending onnxcam") is found too.
METHODS: dict[str, type[BaseCAM]] = cast("dict[str, type[BaseCAM]]", CLASSES)


@dataclass(frozen=True)
class MethodInfo:
    name: str
    gradients: bool
    cost: str
    summary: str
    cost_class: str = ""
    slow: bool = False
    options: tuple[MethodOption, ...] = ()
    aliases: tuple[str, ...] = ()
    applies_to: str = ""  # what a model needs for the method ("" = every model with a feature map)


def _summary(cls: type) -> str:
    doc = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
    return doc.split(": ", 1)[-1] if len(doc) > 90 else doc


def method_info() -> list[MethodInfo]:
    """One row per method, cheapest cost class first: name, gradients or not, cost, summary, options."""
    rows = [MethodInfo(s.name, s.uses_gradients, s.cost, _summary(METHODS[s.name]), s.cost_class, s.slow,
                       s.options, s.aliases, ", ".join(r.name for r in s.requires)) for s in specs().values()]
    return sorted(rows, key=lambda r: COST_CLASSES.index(r.cost_class))


def methods_for(model: Any, names: Sequence[str] | None = None) -> list[str]:
    """The methods of ``names`` (default: every declared one) that apply to ``model``: those whose
    requirements (``MethodSpec.requires``) it has. Checking may run the model once (see
    ``onnxcam.explainers.attention.has_global_attention``); the answer is cached per model."""
    return [spec_of(n).name for n in (names if names is not None else list(METHODS)) if applies(spec_of(n), model)]


# -- names ------------------------------------------------------------------------------------------


def _compact(name: str) -> str:
    """Spelling-insensitive key: 'Grad-CAM', 'grad_cam' and 'gradcam' are one method."""
    return name.strip().lower().replace("_", "").replace("-", "").replace(" ", "")


def _lookup() -> dict[str, str]:
    table: dict[str, str] = {}
    for spec in specs().values():
        for key in (spec.name, *spec.aliases):
            table[_compact(key)] = spec.name
    return table


def get_method(name: str) -> type[BaseCAM]:
    """The class of method ``name`` (any declared name or alias; case, '-' and '_' do not matter)."""
    table = _lookup()
    key = _compact(name)
    if key not in table:
        close = difflib.get_close_matches(key, list(table), n=1, cutoff=0.6)
        hint = f"did you mean {table[close[0]]!r}? " if close else ""
        raise ArgumentError(f"unknown method {name!r}: {hint}choose one of {', '.join(METHODS)} "
                            "(see `onnxcam methods`)")
    return METHODS[table[key]]


def spec_of(method: str | type) -> MethodSpec:
    """The declaration of ``method`` (a name, alias or declared class)."""
    cls = get_method(method) if isinstance(method, str) else method
    spec = declared_spec(cls)
    if spec is None:
        raise ArgumentError(f"{cls.__qualname__} has no @method_spec declaration: declare it to use it by name")
    return spec


def unique_methods(names: Sequence[str]) -> tuple[list[str], list[str]]:
    """Canonical names in first-seen order, and the names dropped as repeats of an earlier one."""
    kept: list[str] = []
    dropped: list[str] = []
    for name in names:
        canonical = spec_of(name).name
        if canonical in kept:
            dropped.append(name)
        else:
            kept.append(canonical)
    return kept, dropped


def is_slow(methods: Sequence[str]) -> bool:
    """Whether any of ``methods`` costs a run per channel (minutes on CPU, worth a progress bar)."""
    return any(spec_of(m).slow for m in methods)


# -- options ----------------------------------------------------------------------------------------

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _type_word(t: type) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(t, t.__name__)


def coerce_option(method: str, option: MethodOption, value: Any, where: str) -> Any:
    """``value`` (text, or already typed) as ``option.type``, range-checked; ``where`` names it in errors."""
    typed = _convert(option.type, value)
    if typed is None:
        raise ArgumentError(f"{where}: {method}.{option.name} takes {_type_word(option.type)}, got {value!r}")
    if option.minimum is not None and not isinstance(typed, (bool, str)) and typed < option.minimum:
        low = int(option.minimum) if option.type is int else option.minimum
        raise ArgumentError(f"{where}: {method}.{option.name} must be >= {low}, got {typed}")
    return typed


def _convert(kind: type, value: Any) -> Any:
    """``value`` as ``kind``, or None when it is not one (bools are not numbers here)."""
    if isinstance(value, str):
        text = value.strip()
        if kind is bool:
            low = text.lower()
            return True if low in _TRUE else False if low in _FALSE else None
        if kind is str:
            return text
        try:
            number = int(text) if kind is int else float(text)
        except ValueError:
            return None
        return number if math.isfinite(number) else None  # nan would pass every range check
    if isinstance(value, bool):
        return value if kind is bool else None
    if kind is int and isinstance(value, int):
        return value
    if kind is float and isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    return None


def _allowed(methods: Sequence[str]) -> str:
    names = [f"{m}.{o.name}" for m in methods for o in spec_of(m).options]
    return ", ".join(names) if names else f"none ({', '.join(methods)} take no options)"


def _option_of(method: str, name: str, where: str) -> MethodOption:
    option = spec_of(method).option(name.replace("-", "_"))
    if option is None:
        raise ArgumentError(f"{where}: {method} has no option {name!r}; allowed: {_allowed([method])}")
    return option


def _split(text: str, chosen: Sequence[str]) -> tuple[str, str, str]:
    """``'scorecam.max_channels=64'`` -> (method, option name, raw value); a bare ``option=value``
    goes to the one chosen method that has the option."""
    where = f"--option {text}"
    key, eq, raw = text.partition("=")
    key = key.strip()
    if not eq or not key:
        raise ArgumentError(f"{where}: write METHOD.OPTION=VALUE, e.g. scorecam.max_channels=64")
    if "." in key:
        method_text, _, name = key.rpartition(".")
        method = spec_of(method_text).name
        if method not in chosen:
            raise ArgumentError(f"{where}: {method} is not among the methods ({', '.join(chosen)}); add it to "
                                "--method or drop the option")
        return method, name, raw
    owners = [m for m in chosen if spec_of(m).option(key.replace("-", "_")) is not None]
    if not owners:
        raise ArgumentError(f"{where}: no chosen method has option {key!r}; allowed: {_allowed(chosen)}")
    if len(owners) > 1:
        raise ArgumentError(f"{where}: {', '.join(owners)} all take {key!r}; say which, e.g. {owners[0]}.{text}")
    return owners[0], key, raw


def _put(result: dict[str, dict[str, Any]], method: str, option: MethodOption, value: Any, where: str) -> None:
    given = result.setdefault(method, {})
    if option.name in given and given[option.name] != value:
        raise ArgumentError(f"{where}: {method}.{option.name} is already set to {given[option.name]!r}; give it once")
    given[option.name] = value


def parse_method_options(
    assignments: Sequence[str],
    methods: Sequence[str],
    shortcuts: Mapping[str, tuple[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Constructor options per canonical method name, from ``METHOD.OPTION=VALUE`` texts.

    ``methods``: the methods being run; an option for another method is an error (it would be
    ignored silently). ``OPTION=VALUE`` without a method is fine when one of ``methods`` has it.
    ``shortcuts``: ``{flag: (option, value)}`` for flags such as ``--max-channels``, applied to
    every one of ``methods`` that has the option; None values are skipped. Values are converted to
    the declared type and range-checked; errors name the flag or assignment and what is allowed.
    """
    chosen = unique_methods(methods)[0]
    result: dict[str, dict[str, Any]] = {}
    for text in assignments:
        method, name, raw = _split(text, chosen)
        where = f"--option {text}"
        option = _option_of(method, name, where)
        _put(result, method, option, coerce_option(method, option, raw, where), where)
    for flag, (name, value) in (shortcuts or {}).items():
        if value is not None:
            _shortcut(result, flag, name, value, chosen)
    return result


def _shortcut(result: dict[str, dict[str, Any]], flag: str, name: str, value: Any, chosen: Sequence[str]) -> None:
    owners = [m for m in chosen if spec_of(m).option(name) is not None]
    if not owners:
        having = [s.name for s in specs().values() if s.option(name) is not None]
        raise ArgumentError(f"{flag} sets {name} of {', '.join(having)}; none of them is among the methods "
                            f"({', '.join(chosen)}): add one to --method or drop {flag}")
    where = f"{flag} {value}"
    for method in owners:
        option = _option_of(method, name, where)
        _put(result, method, option, coerce_option(method, option, value, where), where)


def check_options(method: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` for ``method`` converted and range-checked (for callers that hold a dict already)."""
    spec = spec_of(method)
    checked: dict[str, Any] = {}
    for name, value in options.items():
        where = f"{spec.name} option {name}={value}"
        option = _option_of(spec.name, name, where)
        checked[option.name] = coerce_option(spec.name, option, value, where)
    return checked
