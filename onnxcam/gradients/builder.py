"""Turns an ONNX model into a gradient model: the forward graph plus reverse-mode adjoint nodes."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import onnx
from onnx import helper

from onnxcam.errors import ArgumentError, LayerNotFoundError, UnsupportedOpError
from onnxcam.gradients import rules_extra, rules_math, rules_nn, rules_shape  # noqa: F401  (fill RULES)
from onnxcam.gradients._emit import Emitter, NoRule, attr
from onnxcam.gradients._facts import collect_facts
from onnxcam.gradients._registry import RULES, Rule
from onnxcam.gradients.straight_through import output_quantizers
from onnxcam.graph.protos import make_model, opset_version

# onnxruntime's fused transformer ops: no rules (their semantics are kernel-specific); the error
# names the unfused export instead.
FUSED_TRANSFORMER_OPS = frozenset({
    "Attention", "MultiHeadAttention", "PackedAttention", "GroupQueryAttention", "SkipLayerNormalization",
    "SkipSimplifiedLayerNormalization", "EmbedLayerNormalization", "FastGelu", "BiasGelu", "QuickGelu",
    "BiasAdd", "BiasSplitGelu", "RotaryEmbedding",
})
# Outputs of these ops are piecewise constant (or integer) in their inputs: no adjoint flows through.
_ZERO_GRAD_OPS = frozenset(
    "Shape Size NonZero ArgMax ArgMin Equal Greater GreaterOrEqual Less LessOrEqual Not And Or Xor "
    "IsNaN IsInf Sign Floor Ceil Round ConstantOfShape EyeLike RandomNormalLike RandomUniformLike "
    "Bernoulli Multinomial".split()
)
_FLOAT_TYPES = frozenset(
    {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
)


@dataclass(frozen=True)
class GradientModel:
    """A model computing the original outputs and the VJP ``sum_o sum(seed_o * o)`` w.r.t. ``wrt``.

    ``model`` inputs: the original inputs, then one seed per seeded output (shaped like that output).
    ``model`` outputs: the original outputs, then one gradient per ``wrt`` tensor (shaped like it).
    """

    model: onnx.ModelProto
    seed_inputs: dict[str, str]
    grad_outputs: dict[str, str]


@dataclass
class _Failure:
    op_type: str
    node: str
    reason: str


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.:/-]", "_", name)


class _Plan:
    """The part of the graph the adjoint flows through, and the nodes a rule is missing for."""

    def __init__(self, model: onnx.ModelProto, wrt: Sequence[str], outputs: Sequence[str] | None) -> None:
        graph = model.graph
        self.model = model
        produced = {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
        for name in wrt:
            if name not in produced:
                raise LayerNotFoundError(
                    f"cannot differentiate w.r.t. '{name}': no graph input or node output has that name; "
                    "pass a tensor name from the model (see `onnxcam layers`)"
                )
        graph_outputs = [o.name for o in graph.output]
        self.outputs = list(outputs) if outputs is not None else graph_outputs
        for name in self.outputs:
            if name not in graph_outputs:
                raise ArgumentError(
                    f"cannot seed '{name}': it is not a graph output (outputs are {graph_outputs}); "
                    "add it as a graph output first"
                )
        if not wrt:
            raise ArgumentError("build_gradient_model needs at least one tensor in `wrt`")
        self.wrt = list(dict.fromkeys(wrt))
        self.shapes, self.dtypes, self.consts = collect_facts(model)
        self.opset = opset_version(model)

        # integer outputs stay active (a quantised tensor carries the straight-through adjoint, and
        # an integer-only op such as QLinearConv must surface as unsupported, not as a zero gradient)
        active = set(self.wrt)
        for node in graph.node:
            if self._zero_grad(node) or not any(i in active for i in node.input if i):
                continue
            active.update(o for o in node.output if o)
        self.active = active

        needed = set(self.outputs) & active
        relevant: list[onnx.NodeProto] = []
        for node in reversed(graph.node):
            if self._zero_grad(node) or not any(o in needed for o in node.output):
                continue
            inputs = [i for i in node.input if i in active]
            if inputs:
                relevant.append(node)
                needed.update(inputs)
        self.relevant = relevant  # reverse topological order
        # ops without any rule are reported up front, so a failure downstream of them (whose
        # adjoint then never arrives) cannot hide them
        self.failures: list[_Failure] = [
            _Failure(n.op_type, n.name, "no rule") for n in reversed(relevant) if self._rule(n) is None
        ]

    def _zero_grad(self, node: onnx.NodeProto) -> bool:
        if node.op_type == "Cast" and node.domain in ("", "ai.onnx"):
            return attr(node, "to") not in _FLOAT_TYPES
        return node.op_type in _ZERO_GRAD_OPS and node.domain in ("", "ai.onnx")

    @staticmethod
    def _rule(node: onnx.NodeProto) -> Rule | None:
        return RULES.get(node.op_type) if node.domain in ("", "ai.onnx") else None

    def emit(self) -> tuple[Emitter, dict[str, str], dict[str, str]]:
        graph = self.model.graph
        taken = {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
        taken |= {i.name for i in graph.initializer}
        e = Emitter(self.shapes, self.dtypes, self.consts, self.active, self.opset, taken)
        e.output_quantizers = output_quantizers(graph)

        contributions: dict[str, list[str]] = {}
        seeds: dict[str, str] = {}
        for out in self.outputs:
            seed = e.fresh(f"seed_{_safe(out)}").replace("onnxcam_grad/", "onnxcam_seed/")
            taken.add(seed)
            seeds[out] = seed
            contributions.setdefault(out, []).append(seed)

        summed: dict[str, str | None] = {}

        def adjoint(name: str) -> str | None:
            if name not in summed:
                parts = contributions.pop(name, [])
                summed[name] = None if not parts else parts[0] if len(parts) == 1 else e.op("Sum", parts)
            return summed[name]

        for node in self.relevant:
            gys = [adjoint(o) if o else None for o in node.output]
            if all(g is None for g in gys):
                continue
            fn = self._rule(node)
            if fn is None:
                continue
            try:
                grads = fn(e, node, gys)
            except NoRule as exc:
                self.failures.append(_Failure(node.op_type, node.name, str(exc)))
                continue
            for name, g in zip(node.input, grads, strict=False):
                if g is not None and name in self.active:
                    contributions.setdefault(name, []).append(g)

        grads_out: dict[str, str] = {}
        for name in self.wrt:
            g = adjoint(name)
            out = e.fresh(f"grad_{_safe(name)}").replace("onnxcam_grad/", "onnxcam_gradient/")
            if g is None:  # wrt does not reach any seeded output: its gradient is exactly zero
                g = e.zeros_like(name)
            e.nodes.append(helper.make_node("Identity", [g], [out], name=out))
            grads_out[name] = out
        return e, seeds, grads_out

    def error(self) -> UnsupportedOpError:
        op_types = sorted({f.op_type for f in self.failures})
        details = "; ".join(f"{f.op_type} node '{f.node or '?'}': {f.reason}" for f in self.failures[:10])
        more = f" (+{len(self.failures) - 10} more)" if len(self.failures) > 10 else ""
        fused = sorted(set(op_types) & FUSED_TRANSFORMER_OPS)
        hint = (f"; {', '.join(fused)} are onnxruntime's fused transformer kernels (com.microsoft, written by "
                "onnxruntime.transformers.optimizer): explain the model as exported before that fusion (e.g. "
                "the torch.onnx.export file) for exact gradients") if fused else ""
        return UnsupportedOpError(
            f"no reverse-mode gradient rule for op(s) {', '.join(op_types)} between {self.wrt} and "
            f"outputs {self.outputs} ({details}{more}); finite differences will be used instead "
            f"(they can also be forced for every model){hint}",
            op_types,
        )


def missing_rules(model: onnx.ModelProto, wrt: Sequence[str], outputs: Sequence[str] | None = None) -> list[str]:
    """Op types on a path from ``wrt`` to ``outputs`` that the builder cannot differentiate (sorted)."""
    plan = _Plan(model, wrt, outputs)
    plan.emit()
    return sorted({f.op_type for f in plan.failures})


def build_gradient_model(
    model: onnx.ModelProto, wrt: Sequence[str], outputs: Sequence[str] | None = None
) -> GradientModel:
    """Append reverse-mode nodes computing d(sum_o sum(seed_o * o)) / d(t) for each ``t`` in ``wrt``.

    ``wrt`` may name graph inputs and intermediate tensors; ``outputs`` defaults to every graph output.
    Only nodes between ``wrt`` and ``outputs`` get adjoints; weights never do.
    Raises ``UnsupportedOpError`` when a node on that path has no rule.
    """
    plan = _Plan(model, wrt, outputs)
    e, seeds, grads = plan.emit()
    if plan.failures:
        raise plan.error()
    graph = model.graph
    seed_inputs = []
    for out, seed in seeds.items():
        shape = plan.shapes.get(out)
        seed_inputs.append(helper.make_tensor_value_info(seed, plan.dtypes.get(out, onnx.TensorProto.FLOAT), shape))
    grad_outputs = []
    for name, out in grads.items():
        grad_outputs.append(
            helper.make_tensor_value_info(out, plan.dtypes.get(name, onnx.TensorProto.FLOAT), plan.shapes.get(name))
        )
    new_graph = helper.make_graph(
        list(graph.node) + e.nodes,
        graph.name or "gradient",
        list(graph.input) + seed_inputs,
        list(graph.output) + grad_outputs,
        list(graph.initializer) + e.initializers,
        value_info=list(graph.value_info),
    )
    result = make_model(new_graph, model.opset_import, ir_version=max(model.ir_version, 3))
    return GradientModel(result, dict(seeds), dict(grads))
