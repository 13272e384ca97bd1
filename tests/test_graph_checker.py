"""Every graph onnxcam builds passes ``onnx.checker`` with ``full_check=True`` (types, shapes, node order).

onnxruntime is more forgiving than the checker (it re-sorts nothing but tolerates some type gaps), so
a graph that runs can still be invalid ONNX and break the next pass or a stricter runtime. Checked:
for every model models/ builds, the body and the head at every role layer of the zoo spec and at the
auto layer, the folded static head, its gradient graph and that graph pruned to its gradients; the
heads at every candidate layer (and a two-tensor cut) where the model is small enough to be quick.
"""

from __future__ import annotations

import onnx
import pytest
from graphs import residual_net

import onnxcam
from models.build import DEFAULT, MODELS
from onnxcam.gradients import build_gradient_model
from onnxcam.gradients.straight_through import straight_through, straight_through_note
from onnxcam.graph.prune import prune_to_outputs
from onnxcam.graph.shapes import tensor_infos
from onnxcam.graph.split import split_model

# Full checks serialise the model: EfficientNet's 19 MB take ~0.15 s each, too slow for every layer.
EVERY_LAYER = [n for n in DEFAULT if not n.startswith("efficientnet")]
BATCH = 2


@pytest.fixture(scope="module", params=list(DEFAULT))
def zoo(request, build_model) -> tuple[str, onnxcam.Model]:
    """(zoo name, the model loaded once for every test of the module)."""
    return request.param, onnxcam.load(build_model(request.param), device="cpu")


def _check(proto: onnx.ModelProto, what: str) -> None:
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        pytest.fail(f"{what}: {str(exc).splitlines()[0]}")


def _role_layers(name: str, model: onnxcam.Model) -> list[str]:
    roles = [tensor for _, tensor in MODELS[name].layers.values()]
    return list(dict.fromkeys([*roles, model.layer("auto").name]))


def test_bodies_heads_and_gradient_graphs_at_role_layers(zoo: tuple[str, onnxcam.Model]) -> None:
    name, model = zoo
    layers = _role_layers(name, model)
    assert len(layers) >= 2
    for layer in layers:
        where = f"{name} at {layer}"
        split = model.split((layer,))
        _check(split.body, f"body of {where}")
        _check(split.head, f"head of {where}")
        head = model.static_head((layer,), BATCH)
        _check(head, f"static head of {where}")
        if straight_through_note(head) is not None:
            head = straight_through(head)[0]  # the quantised head is differentiated through its clip surrogate
            _check(head, f"straight-through head of {where}")
        built = build_gradient_model(head, (layer,), (split.model_outputs[0],))
        _check(built.model, f"gradient graph of {where}")
        _check(prune_to_outputs(built.model, built.grad_outputs.values()), f"pruned gradient graph of {where}")


@pytest.mark.parametrize("name", EVERY_LAYER)
def test_heads_at_every_layer(name: str, build_model) -> None:
    model = onnxcam.load(build_model(name), device="cpu")
    layers = [layer.name for layer in model.layers()]
    cuts = [(layer,) for layer in layers] + [(layers[len(layers) // 3], layers[-2])]
    for cut in cuts:
        _check(model.split(cut).head, f"head of {name} at {', '.join(cut)}")


@pytest.mark.parametrize("nhwc", [False, True])
@pytest.mark.parametrize("cut", [["a"], ["c"], ["e"], ["g"], ["c", "b"], ["a", "e"]])
def test_hand_built_splits(cut: list[str], nhwc: bool) -> None:
    model = onnx.shape_inference.infer_shapes(residual_net(nhwc=nhwc))
    split = split_model(model, cut, tensor_infos(model))
    _check(split.body, f"body at {cut}")
    _check(split.head, f"head at {cut}")
