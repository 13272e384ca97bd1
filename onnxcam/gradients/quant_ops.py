"""Float surrogates of onnxruntime's integer-op int8 formats, so the ordinary rules differentiate them.

``onnxruntime.quantization`` writes three formats. QDQ (float ops between QuantizeLinear /
DequantizeLinear pairs) is handled by ``straight_through``. The other two compute on integers:

- dynamic (``quantize_dynamic``): ``DynamicQuantizeLinear`` -> ``ConvInteger`` / ``MatMulInteger``
  -> ``Cast`` -> ``Mul`` by (activation scale x weight scale);
- QOperator (``quantize_static(quant_format=QOperator)``): ``QLinearConv``, ``QLinearMatMul``,
  ``QGemm``, ``QLinearAdd``, ``QLinearMul``, ``QLinearGlobalAveragePool``, ``QLinearAveragePool``,
  ``QLinearConcat``, ``QLinearSigmoid``, ``QLinearLeakyRelu``, ``QLinearSoftmax`` on uint8/int8
  tensors, with data-movement ops (Pad, Reshape, MaxPool, ...) between them.

``float_surrogate`` rewrites each such op into its float equivalent followed, for an op that
requantises its output, by a clip to that quantiser's range: the same clipped straight-through
function QDQ heads are differentiated as. Each integer tensor becomes a float tensor holding
``q - zero_point`` unrounded (integer units, zero point removed), so scales stay where the model
put them:

- a QuantizeLinear of a float tensor becomes ``clip(x / scale, qmin - zp - 1/2, qmax - zp + 1/2)``
  and a DequantizeLinear of a rewritten tensor ``t * scale``;
- ``DynamicQuantizeLinear`` takes its scale from the data, and the model only ever multiplies that
  scale back in (``Mul(x_scale, w_scale)`` after the integer op): the surrogate sets it to 1 and
  passes ``x`` through, so ``ConvInteger(x, w) * 1 * w_scale`` is exactly the float convolution
  with dequantised weights (its range always covers the data, so there is nothing to clip);
- a QLinear op with constant weights folds ``(w - w_zp) * w_scale * x_scale / y_scale`` into one
  float weight (per output channel where the weights are per channel).

Integer graph inputs (tensors crossing a split) are cast to float and their zero point removed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxcam.errors import UnsupportedOpError

# Integer ranges of the quantised types a QuantizeLinear can produce.
_INT_RANGES: dict[int, tuple[int, int]] = {
    onnx.TensorProto.UINT8: (0, 255), onnx.TensorProto.INT8: (-128, 127),
    onnx.TensorProto.UINT16: (0, 65535), onnx.TensorProto.INT16: (-32768, 32767),
    onnx.TensorProto.UINT4: (0, 15), onnx.TensorProto.INT4: (-8, 7),
}


def quantiser_range(scale: np.ndarray | None, zero_point: np.ndarray | None,
                    output_dtype: int = 0) -> tuple[float, float] | None:
    """``(lo, hi)``: the real values a per-tensor QuantizeLinear rounds into its integer range
    instead of clipping, ``((qmin - zp - 1/2) * scale, (qmax - zp + 1/2) * scale)`` (the mask of
    PyTorch's fake-quantise backward); None when unknown (scale not a constant scalar, a
    non-integer type, or a per-axis quantiser).

    The half step matters in practice: after a folded ReLU, whole channels sit exactly at the zero
    point, and their gradient must pass (as through the float model's pooling) with a margin that
    finite differences see too."""
    if scale is None or np.size(scale) != 1:
        return None
    if zero_point is not None:
        if np.size(zero_point) != 1:
            return None
        elem = int(helper.np_dtype_to_tensor_dtype(np.asarray(zero_point).dtype))
        zp = float(np.asarray(zero_point).reshape(()))
    else:
        elem, zp = output_dtype or onnx.TensorProto.UINT8, 0.0
    bounds = _INT_RANGES.get(elem)
    if bounds is None:
        return None
    s = float(np.asarray(scale).reshape(()))
    lo, hi = sorted(((bounds[0] - zp - 0.5) * s, (bounds[1] - zp + 0.5) * s))
    return lo, hi


_MS = "com.microsoft"
# Ops that move or select integer values without arithmetic: they run unchanged on the float
# surrogate (a constant pad value is converted like the tensor it pads).
_PASS_THROUGH = frozenset(
    "Identity Reshape Flatten Transpose Squeeze Unsqueeze Slice Split Pad MaxPool Gather Expand Tile "
    "DepthToSpace SpaceToDepth Resize Upsample".split()
)
_QLINEAR = frozenset(
    "QLinearConv QLinearMatMul QGemm QLinearAdd QLinearMul QLinearGlobalAveragePool QLinearAveragePool "
    "QLinearConcat QLinearSigmoid QLinearLeakyRelu QLinearSoftmax".split()
)
INTEGER_OPS = _QLINEAR | {"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"}


def integer_op_count(model: onnx.ModelProto) -> int:
    """How many dynamic / QOperator integer ops ``model`` has (0 for float and QDQ models)."""
    return sum(n.op_type in INTEGER_OPS and n.domain in ("", "ai.onnx", _MS) for n in model.graph.node)


class _Rewriter:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        graph = model.graph
        self.values: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                for a in node.attribute:
                    if a.name == "value":
                        self.values[node.output[0]] = numpy_helper.to_array(a.t)
        # rewritten tensor -> its zero point (float32 tensors now holding q - zp, integer units)
        self.zero: dict[str, np.ndarray] = {}
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0
        self._n = 0
        outputs = {o.name for o in graph.output}
        self.unclipped = {n.input[0] for n in graph.node
                          if n.op_type == "DequantizeLinear" and n.output and n.output[0] in outputs}
        self.consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
        for node in graph.node:
            for k, name in enumerate(node.input):
                self.consumers.setdefault(name, []).append((node, k))

    # -- helpers ----------------------------------------------------------------------------------
    def fresh(self, base: str) -> str:
        self._n += 1
        return f"{base}_onnxcam_float{self._n}"

    def const(self, base: str, value: np.ndarray | float) -> str:
        name = self.fresh(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    def op(self, op_type: str, inputs: list[str], output: str | None = None, **attrs: Any) -> str:
        out = output or self.fresh(inputs[0] if inputs else op_type)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=f"{out}_node", **attrs))
        return out

    def value(self, name: str, what: str, node: onnx.NodeProto) -> np.ndarray:
        v = self.values.get(name) if name else None
        if v is None:
            raise UnsupportedOpError(
                f"{node.op_type} node '{node.name}': its {what} '{name}' is not a constant, so the int8 op has no "
                "float surrogate; use gradient mode 'finite'", [node.op_type])
        return v

    def zp(self, node: onnx.NodeProto, k: int) -> np.ndarray:
        return self.values.get(node.input[k], np.zeros((), np.int64)) if len(node.input) > k and node.input[k] \
            else np.zeros((), np.int64)

    def operand(self, node: onnx.NodeProto, k: int, zp: np.ndarray, factor: float = 1.0) -> str:
        """Input ``k`` in integer units times ``factor``: an activation (already ``q - zp``) or a
        constant (converted here)."""
        name = node.input[k]
        if name in self.values:
            value = (self.values[name].astype(np.float64) - np.asarray(zp, np.float64)) * factor
            return self.const(f"{node.name}_{k}", value)
        return self.scaled(self.activation(name, node), factor)

    def activation(self, name: str, node: onnx.NodeProto) -> str:
        if name not in self.zero:
            raise UnsupportedOpError(
                f"{node.op_type} node '{node.name}' reads '{name}', an integer tensor onnxcam cannot follow back "
                "to a quantiser; use gradient mode 'finite'", [node.op_type])
        return name

    def requantise(self, node: onnx.NodeProto, value: str, ys: str, yzp_k: int, out: str) -> None:
        """``out = clip(value, range of the output quantiser)`` in integer units (the model's output
        quantiser is not clipped: a CAM needs the score's slope, not its saturation)."""
        yzp = self.zp(node, yzp_k)
        self.zero[out] = yzp
        scale = self.values.get(ys)
        bounds = quantiser_range(np.ones((), np.float32) if scale is not None else None, yzp,
                                 _elem_of(yzp, node))
        if out in self.unclipped or bounds is None:
            self.op("Identity", [value], out)
            return
        self.op("Clip", [value, self.const(f"{out}_lo", bounds[0]), self.const(f"{out}_hi", bounds[1])], out)

    def scaled(self, name: str, factor: np.ndarray | float) -> str:
        f = np.asarray(factor, np.float64)
        if f.size == 1 and float(f) == 1.0:
            return name
        return self.op("Mul", [name, self.const(f"{name}_scale", f)])

    # -- the pass ---------------------------------------------------------------------------------
    def run(self) -> onnx.ModelProto:
        graph = self.model.graph
        for inp in graph.input:
            elem = inp.type.tensor_type.elem_type
            if elem in (onnx.TensorProto.UINT8, onnx.TensorProto.INT8) and inp.name not in self.values:
                self._integer_input(inp.name, elem)
        for node in graph.node:
            handler = self._handler(node)
            if handler is None:
                self.nodes.append(node)
            else:
                handler(node)
        return self._finish()

    def _integer_input(self, name: str, elem: int) -> None:
        # the zero point of a crossing integer tensor is named by the QLinear op that reads it
        zp = np.zeros((), helper.tensor_dtype_to_np_dtype(elem))
        for node, k in self.consumers.get(name, []):
            pos = _ZP_OF_INPUT.get(node.op_type, {}).get(k)
            if pos is not None and len(node.input) > pos and node.input[pos] in self.values:
                zp = self.values[node.input[pos]]
                break
        new = self.fresh(name)
        cast = self.op("Cast", [name], to=onnx.TensorProto.FLOAT)
        self.op("Sub", [cast, self.const(f"{name}_zp", zp)], new)
        self._rename_input(name, new)
        self.zero[new] = zp

    def _rename_input(self, old: str, new: str) -> None:
        for node in self.model.graph.node:
            for k, name in enumerate(node.input):
                if name == old:
                    node.input[k] = new

    def _handler(self, node: onnx.NodeProto) -> Callable[[onnx.NodeProto], None] | None:
        if node.domain not in ("", "ai.onnx", _MS):
            return None
        if node.op_type == "QuantizeLinear" and node.input[0] not in self.values:
            return self._quantize
        if node.op_type == "QuantizeLinear" and all(i in self.values for i in node.input[1:] if i):
            self._fold_quantize(node)  # a quantised constant (e.g. a pad value): its value is needed
            return None
        if node.op_type == "DequantizeLinear" and node.input[0] in self.zero:
            return self._dequantize
        if node.op_type in INTEGER_OPS:
            return getattr(self, f"_{node.op_type}")  # type: ignore[no-any-return]
        if node.op_type in _PASS_THROUGH and node.input and node.input[0] in self.zero:
            return self._pass_through
        if any(i in self.zero for i in node.input):
            raise UnsupportedOpError(
                f"{node.op_type} node '{node.name}' computes on int8 values and onnxcam has no float surrogate "
                "for it; use gradient mode 'finite'", [node.op_type])
        return None

    def _quantize(self, node: onnx.NodeProto) -> None:
        s = self.value(node.input[1], "scale", node)
        zp = self.zp(node, 2)
        if s.size != 1:
            raise UnsupportedOpError(f"QuantizeLinear node '{node.name}' quantises an activation per axis; "
                                     "use gradient mode 'finite'", ["QuantizeLinear"])
        self.count += 1
        out = node.output[0]
        x = self.scaled(node.input[0], 1.0 / float(s.reshape(())))
        self.zero[out] = zp
        bounds = quantiser_range(np.ones((), np.float32), zp, _elem_of(zp, node))
        if out in self.unclipped or bounds is None:
            self.op("Identity", [x], out)
        else:
            self.op("Clip", [x, self.const(f"{out}_lo", bounds[0]), self.const(f"{out}_hi", bounds[1])], out)

    def _fold_quantize(self, node: onnx.NodeProto) -> None:
        s = self.values[node.input[1]].astype(np.float64)
        zp = self.zp(node, 2)
        lo, hi = _INT_RANGES.get(_elem_of(zp, node), (0, 255))
        q = np.clip(np.rint(self.values[node.input[0]] / s) + zp.astype(np.float64), lo, hi)
        self.values[node.output[0]] = q.astype(zp.dtype if zp.dtype != np.int64 else np.uint8)

    def _dequantize(self, node: onnx.NodeProto) -> None:
        s = self.value(node.input[1], "scale", node)
        if s.size != 1:
            raise UnsupportedOpError(f"DequantizeLinear node '{node.name}' dequantises an activation per axis; "
                                     "use gradient mode 'finite'", ["DequantizeLinear"])
        self.count += 1
        self.op("Identity", [self.scaled(node.input[0], s.reshape(()))], node.output[0])

    def _pass_through(self, node: onnx.NodeProto) -> None:
        zp = self.zero[node.input[0]]
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        if node.op_type == "Pad" and len(node.input) > 2 and node.input[2]:
            pad = self.value(node.input[2], "pad value", node).astype(np.float64) - np.asarray(zp, np.float64)
            copy.input[2] = self.const(f"{node.input[2]}_float", pad.reshape(()))
        self.nodes.append(copy)
        for out in node.output:
            if out:
                self.zero[out] = zp

    # dynamic ------------------------------------------------------------------------------------
    def _DynamicQuantizeLinear(self, node: onnx.NodeProto) -> None:  # noqa: N802
        self.count += 1
        y, ys, yzp = (list(node.output) + ["", "", ""])[:3]
        if y:
            self.op("Identity", [node.input[0]], y)
            self.zero[y] = np.zeros((), np.uint8)
        if ys:
            self.op("Identity", [self.const("dynamic_scale", np.ones((), np.float32))], ys)
        if yzp:
            self.inits.append(numpy_helper.from_array(np.zeros((), np.uint8), yzp))

    def _integer_product(self, node: onnx.NodeProto, float_op: str) -> None:
        self.count += 1
        names = [self.operand(node, 0, self.zp(node, 2)), self.operand(node, 1, self._weight_zp(node, 3, float_op))]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        self.op(float_op, names, node.output[0], **attrs)

    def _weight_zp(self, node: onnx.NodeProto, k: int, float_op: str) -> np.ndarray:
        zp = self.zp(node, k)
        if float_op == "Conv" and zp.size > 1:  # per output channel: (M,) -> (M, 1, 1, ...)
            w = self.values.get(node.input[1])
            return zp.reshape((-1,) + (1,) * ((w.ndim if w is not None else 4) - 1))
        return zp

    def _ConvInteger(self, node: onnx.NodeProto) -> None:  # noqa: N802
        self._integer_product(node, "Conv")

    def _MatMulInteger(self, node: onnx.NodeProto) -> None:  # noqa: N802
        self._integer_product(node, "MatMul")

    # QOperator ----------------------------------------------------------------------------------
    def _scale(self, node: onnx.NodeProto, k: int) -> np.ndarray:
        return self.value(node.input[k], "scale", node).astype(np.float64)

    def _QLinearConv(self, node: onnx.NodeProto) -> None:  # noqa: N802
        # x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, B
        self.count += 1
        x = self.activation(node.input[0], node)
        xs, ws, ys = self._scale(node, 1), self._scale(node, 4), self._scale(node, 6)
        w = self.value(node.input[3], "weight", node).astype(np.float64)
        per = (-1,) + (1,) * (w.ndim - 1)
        wzp = np.asarray(self.zp(node, 5), np.float64)
        mult = ws.reshape(-1) * float(xs.reshape(())) / float(ys.reshape(()))
        weight = (w - (wzp.reshape(per) if wzp.size > 1 else wzp)) * (mult.reshape(per) if mult.size > 1 else mult)
        inputs = [x, self.const(f"{node.name}_W", weight)]
        if len(node.input) > 8 and node.input[8]:
            bias = self.value(node.input[8], "bias", node).astype(np.float64)
            inputs.append(self.const(f"{node.name}_B", bias * mult.reshape(-1) if mult.size > 1 else bias * mult))
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        self.requantise(node, self.op("Conv", inputs, **attrs), node.input[6], 7, node.output[0])

    def _matmul_like(self, node: onnx.NodeProto, a_k: int, b_k: int, y_k: int | None,
                     trans_b: bool) -> tuple[str, float, str]:
        """(a, output multiplier, b) of a QLinearMatMul / QGemm in integer units; a constant b has its
        per-column scale folded in."""
        a_scale, b_scale = self._scale(node, a_k + 1), self._scale(node, b_k + 1)
        y_scale = float(self._scale(node, y_k).reshape(())) if y_k is not None and len(node.input) > y_k \
            and node.input[y_k] else 1.0
        a_name = self.operand(node, a_k, self.zp(node, a_k + 2))
        bzp = np.asarray(self.zp(node, b_k + 2), np.float64)
        mult = float(a_scale.reshape(())) / y_scale
        b_const = self.values.get(node.input[b_k])
        if b_const is not None:  # per-column zero points and scales fold into the weight
            col = (1, -1) if not trans_b else (-1, 1)
            zp = bzp.reshape(col) if bzp.size > 1 else bzp
            sc = b_scale.reshape(col) if b_scale.size > 1 else b_scale
            return a_name, mult, self.const(f"{node.name}_B", (b_const.astype(np.float64) - zp) * sc)
        b = self.operand(node, b_k, bzp)
        if b_scale.size != 1:
            raise UnsupportedOpError(f"{node.op_type} node '{node.name}': per-axis scale on an activation operand; "
                                     "use gradient mode 'finite'", [node.op_type])
        return a_name, mult * float(b_scale.reshape(())), b

    def _QLinearMatMul(self, node: onnx.NodeProto) -> None:  # noqa: N802
        # a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp
        self.count += 1
        a, mult, b = self._matmul_like(node, 0, 3, 6, False)
        self.requantise(node, self.scaled(self.op("MatMul", [a, b]), mult), node.input[6], 7, node.output[0])

    def _QGemm(self, node: onnx.NodeProto) -> None:  # noqa: N802
        # A, a_scale, a_zp, B, b_scale, b_zp, C, y_scale, y_zp; no y_scale: float output
        self.count += 1
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        has_y = len(node.input) > 7 and bool(node.input[7])
        a, mult, b = self._matmul_like(node, 0, 3, 7 if has_y else None, bool(attrs.get("transB", 0)))
        if attrs.get("transA", 0):
            a = self.op("Transpose", [a], perm=[1, 0])
        prod = self.op("Gemm", [a, b], transB=int(attrs.get("transB", 0)))
        alpha = float(attrs.get("alpha", 1.0))  # type: ignore[arg-type]
        value = self.scaled(prod, mult * alpha)
        if len(node.input) > 6 and node.input[6]:
            # C is int32 in units of a_scale * b_scale
            c = self.value(node.input[6], "bias", node).astype(np.float64)
            b_scale = self._scale(node, 4)
            y_scale = float(self._scale(node, 7).reshape(())) if has_y else 1.0
            a_scale = float(self._scale(node, 1).reshape(()))
            c_real = c * (b_scale.reshape(-1) if b_scale.size > 1 else b_scale) * a_scale
            value = self.op("Add", [value, self.const(f"{node.name}_C", c_real / y_scale)])
        if has_y:
            self.requantise(node, value, node.input[7], 8, node.output[0])
        else:
            self.op("Identity", [value], node.output[0])

    def _binary(self, node: onnx.NodeProto, float_op: str) -> None:
        # A, A_scale, A_zp, B, B_scale, B_zp, C_scale, C_zp
        self.count += 1
        a_s, b_s, c_s = (float(self._scale(node, k).reshape(())) for k in (1, 4, 6))
        if float_op == "Add":
            value = self.op("Add", [self.operand(node, 0, self.zp(node, 2), a_s / c_s),
                                    self.operand(node, 3, self.zp(node, 5), b_s / c_s)])
        else:
            terms = [self.operand(node, 0, self.zp(node, 2)), self.operand(node, 3, self.zp(node, 5))]
            value = self.scaled(self.op("Mul", terms), a_s * b_s / c_s)
        self.requantise(node, value, node.input[6], 7, node.output[0])

    def _QLinearAdd(self, node: onnx.NodeProto) -> None:  # noqa: N802
        self._binary(node, "Add")

    def _QLinearMul(self, node: onnx.NodeProto) -> None:  # noqa: N802
        self._binary(node, "Mul")

    def _unary(self, node: onnx.NodeProto, build: Callable[[str], str], inner_real: bool) -> None:
        # X, X_scale, X_zp, Y_scale, Y_zp: ``build`` maps real (inner_real) or integer-unit input to output
        self.count += 1
        x = self.activation(node.input[0], node)
        xs, ys = float(self._scale(node, 1).reshape(())), float(self._scale(node, 3).reshape(()))
        if inner_real:
            value = self.scaled(build(self.scaled(x, xs)), 1.0 / ys)
        else:
            value = self.scaled(build(x), xs / ys)
        self.requantise(node, value, node.input[3], 4, node.output[0])

    def _QLinearGlobalAveragePool(self, node: onnx.NodeProto) -> None:  # noqa: N802
        last = bool(next((a.i for a in node.attribute if a.name == "channels_last"), 0))

        def pool(x: str) -> str:
            if not last:
                return self.op("GlobalAveragePool", [x])
            rank = _rank(self.model, node.input[0])
            return self.op("ReduceMean", [x], axes=list(range(1, rank - 1)), keepdims=1)

        self._unary(node, pool, False)

    def _QLinearAveragePool(self, node: onnx.NodeProto) -> None:  # noqa: N802
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name != "channels_last"}
        if any(a.name == "channels_last" and a.i for a in node.attribute):
            raise UnsupportedOpError(f"QLinearAveragePool node '{node.name}' is channels-last; use gradient mode "
                                     "'finite'", ["QLinearAveragePool"])
        self._unary(node, lambda x: self.op("AveragePool", [x], **attrs), False)

    def _QLinearSigmoid(self, node: onnx.NodeProto) -> None:  # noqa: N802
        self._unary(node, lambda x: self.op("Sigmoid", [x]), True)

    def _QLinearLeakyRelu(self, node: onnx.NodeProto) -> None:  # noqa: N802
        alpha = next((a.f for a in node.attribute if a.name == "alpha"), 0.01)
        self._unary(node, lambda x: self.op("LeakyRelu", [x], alpha=alpha), False)

    def _QLinearSoftmax(self, node: onnx.NodeProto) -> None:  # noqa: N802
        axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
        self._unary(node, lambda x: self.op("Softmax", [x], axis=axis), True)

    def _QLinearConcat(self, node: onnx.NodeProto) -> None:  # noqa: N802
        # Y_scale, Y_zp, then (X, X_scale, X_zp) per input
        self.count += 1
        ys = float(self._scale(node, 0).reshape(()))
        parts = []
        for k in range(2, len(node.input), 3):
            xs = float(self._scale(node, k + 1).reshape(()))
            parts.append(self.operand(node, k, self.zp(node, k + 2), xs / ys))
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        self.requantise(node, self.op("Concat", parts, axis=axis), node.input[0], 1, node.output[0])

    def _finish(self) -> onnx.ModelProto:
        graph = self.model.graph
        out = onnx.ModelProto()
        out.CopyFrom(self.model)
        g = out.graph
        del g.node[:]
        g.node.extend(self.nodes)
        g.initializer.extend(self.inits)
        rewritten = set(self.zero)
        for vi in list(g.value_info) + list(g.output):
            if vi.name in rewritten:
                vi.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
        int32 = [vi for vi in g.value_info if vi.type.tensor_type.elem_type == onnx.TensorProto.INT32
                 and any(n.output and n.output[0] == vi.name and n.op_type in ("Conv", "MatMul") for n in self.nodes)]
        for vi in int32:
            vi.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
        del graph  # the input proto is never edited
        return out


# For each QLinear op, input position -> position of that input's zero point.
_ZP_OF_INPUT: dict[str, dict[int, int]] = {
    "QLinearConv": {0: 2}, "QLinearMatMul": {0: 2, 3: 5}, "QGemm": {0: 2, 3: 5}, "QLinearAdd": {0: 2, 3: 5},
    "QLinearMul": {0: 2, 3: 5}, "QLinearGlobalAveragePool": {0: 2}, "QLinearAveragePool": {0: 2},
    "QLinearSigmoid": {0: 2}, "QLinearLeakyRelu": {0: 2}, "QLinearSoftmax": {0: 2},
    "DequantizeLinear": {0: 2}, **{"QLinearConcat": {k: k + 2 for k in range(2, 200, 3)}},
}


def _elem_of(zp: np.ndarray, node: onnx.NodeProto) -> int:
    arr = np.asarray(zp)
    if arr.dtype.kind in "ui" and arr.dtype != np.int64:
        return int(helper.np_dtype_to_tensor_dtype(arr.dtype))
    return onnx.TensorProto.UINT8  # no zero point given: uint8, as the operators default to


def _rank(model: onnx.ModelProto, name: str) -> int:
    for vi in list(model.graph.value_info) + list(model.graph.input):
        if vi.name == name and vi.type.tensor_type.HasField("shape"):
            return len(vi.type.tensor_type.shape.dim)
    return 4


def float_surrogate(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of ``model`` with its dynamic / QOperator integer ops (and the quantisers around them)
    replaced by float ops and clips, and how many ops were rewritten (0: the copy equals ``model``).

    Raises ``UnsupportedOpError`` naming the op when an integer tensor meets an op with no surrogate.
    """
    if integer_op_count(model) == 0:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        return copy, 0
    work = onnx.ModelProto()
    work.CopyFrom(model)
    rewriter = _Rewriter(work)
    return rewriter.run(), rewriter.count
