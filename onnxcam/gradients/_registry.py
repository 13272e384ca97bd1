"""The op-type -> reverse-mode rule table that the rule modules fill in."""

from __future__ import annotations

from collections.abc import Callable

import onnx

from onnxcam.gradients._emit import Emitter

# A rule gets the output adjoints (None where an output carries none) and returns one
# contribution per node input (None where the input is inactive or not differentiable).
Rule = Callable[[Emitter, onnx.NodeProto, list[str | None]], list[str | None]]

RULES: dict[str, Rule] = {}


def rule(*op_types: str) -> Callable[[Rule], Rule]:
    def register(fn: Rule) -> Rule:
        for op_type in op_types:
            RULES[op_type] = fn
        return fn

    return register
