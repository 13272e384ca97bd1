"""One declaration per method: the @method_spec declarations agree with the classes, and the registry
(names, aliases, costs, options parsing) is derived from them."""

from __future__ import annotations

import importlib
import inspect
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import onnxcam
from onnxcam.errors import ArgumentError, UnsupportedModelError
from onnxcam.explainers.base import BaseCAM
from onnxcam.method_specs import (
    MethodOption,
    MethodSpec,
    Requirement,
    applies,
    declared_spec,
    forget,
    method_spec,
    option_mismatches,
)
from onnxcam.registry import (
    METHODS,
    check_options,
    get_method,
    is_slow,
    method_info,
    methods_for,
    parse_method_options,
    spec_of,
    unique_methods,
)

ROOT = Path(__file__).resolve().parents[1]


def _explainer_classes() -> list[type]:
    found = []
    for name in ("gradient", "perturbation", "structural", "attention"):
        module = importlib.import_module(f"onnxcam.explainers.{name}")
        found += [c for _, c in inspect.getmembers(module, inspect.isclass) if c.__module__ == module.__name__]
    return found


def test_every_method_class_has_exactly_one_declaration() -> None:
    declared = [c for c in _explainer_classes() if declared_spec(c) is not None]
    assert sorted(c.__name__ for c in declared) == sorted(c.__name__ for c in METHODS.values())
    assert len(set(METHODS.values())) == len(METHODS)
    for name, cls in METHODS.items():
        spec = declared_spec(cls)
        assert spec is not None and spec.name == name == cls.name
        assert spec.uses_gradients == cls.uses_gradients


@pytest.mark.parametrize("name", sorted(METHODS))
def test_declared_options_match_the_constructor(name: str) -> None:
    cls = METHODS[name]
    spec = spec_of(name)
    params = inspect.signature(cls.__init__).parameters
    for option in spec.options:
        assert option.name in params, f"{name}: {option.name} is not a keyword of {cls.__name__}"
        assert params[option.name].default == option.default
        assert type(params[option.name].default) is type(option.default)
    assert option_mismatches(spec, cls) == []


def test_option_mismatches_reports_a_wrong_default_and_a_missing_keyword() -> None:
    class Probe:
        def __init__(self, *, k: int = 3) -> None:
            self.k = k

    spec = MethodSpec("probe", cost="1 forward", cost_class="forward", uses_gradients=False,
                      options=(MethodOption("k", int, 4, "k"), MethodOption("absent", int, 0, "absent")))
    problems = option_mismatches(spec, Probe)
    assert len(problems) == 2 and "defaults to 4" in problems[0] and "'absent'" in problems[1]


@pytest.fixture()
def scratch() -> Iterator[None]:
    yield
    for name in ("probecam", "probecam2"):
        forget(name)


def _spec(name: str, aliases: tuple[str, ...] = ()) -> MethodSpec:
    return MethodSpec(name, cost="1 forward", cost_class="forward", uses_gradients=False, aliases=aliases)


def test_a_second_declaration_on_one_class_is_refused(scratch: None) -> None:
    @method_spec(_spec("probecam"))
    class Probe(BaseCAM):
        pass

    with pytest.raises(TypeError, match="two method declarations"):
        method_spec(_spec("probecam2"))(Probe)


def test_a_taken_name_or_alias_is_refused(scratch: None) -> None:
    with pytest.raises(TypeError, match="'gradcampp' already stands for method 'gradcam\\+\\+'"):
        @method_spec(_spec("probecam", aliases=("gradcampp",)))
        class Probe(BaseCAM):
            pass


def test_a_class_attribute_that_contradicts_the_declaration_is_refused(scratch: None) -> None:
    with pytest.raises(TypeError, match="name is 'other'"):
        @method_spec(_spec("probecam"))
        class Probe(BaseCAM):
            name = "other"


def test_a_declared_class_is_found_by_name(scratch: None) -> None:
    @method_spec(_spec("probecam", aliases=("probe-alias",)))
    class Probe(BaseCAM):
        pass

    assert get_method("probecam") is Probe and get_method("Probe_Alias") is Probe and METHODS["probecam"] is Probe
    assert Probe.name == "probecam" and Probe.uses_gradients is False


def _tiny_cnn(tmp_path: Path) -> onnxcam.Model:
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from onnxcam.graph.protos import make_model

    w = numpy_helper.from_array(np.ones((2, 3, 3, 3), np.float32), "w")
    fc = numpy_helper.from_array(np.ones((2, 2), np.float32), "fc")
    nodes = [helper.make_node("Conv", ["input", "w"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv"], ["act"]),
             helper.make_node("GlobalAveragePool", ["act"], ["gap"]),
             helper.make_node("Flatten", ["gap"], ["flat"]),
             helper.make_node("MatMul", ["flat", "fc"], ["logits"])]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                            ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])], [w, fc])
    path = tmp_path / "tiny.onnx"
    path.write_bytes(make_model(graph, [helper.make_opsetid("", 17)]).SerializeToString())
    return onnxcam.load(path, device="cpu")


def test_a_method_refuses_a_model_without_its_requirement(scratch: None, tmp_path: Path) -> None:
    asked: list[str] = []

    def has_wings(model: onnxcam.Model) -> bool:
        asked.append(model.name)
        return False

    wings = Requirement("wings", "wings on every layer", has_wings)

    @method_spec(MethodSpec("probecam", cost="1 forward", cost_class="forward", uses_gradients=False,
                            requires=(wings,)))
    class Probe(BaseCAM):
        pass

    model = _tiny_cnn(tmp_path)
    assert not applies(Probe, model) and "probecam" not in methods_for(model) and asked
    assert applies(METHODS["gradcam"], model) and spec_of("probecam").applies_to == "wings on every layer"
    with pytest.raises(UnsupportedModelError) as info:
        Probe(model)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("probecam needs wings on every layer, and tiny.onnx has none")
    # The methods that do work, read from their specs: rollout and gradattention need attention.
    listed = msg.split("methods that work on it: ", 1)[1].split(" (see", 1)[0].split(", ")
    assert set(listed) == set(METHODS) - {"probecam", "rollout", "gradattention"}


@pytest.mark.parametrize("method", ["rollout", "Attention-Rollout", "gradattention"])
def test_attention_methods_on_a_cnn_name_the_requirement(tmp_path: Path, method: str) -> None:
    model = _tiny_cnn(tmp_path)
    assert {s.name for s in spec_of(method).requires} == {"global attention"}
    assert methods_for(model) == [n for n in METHODS if n not in ("rollout", "gradattention")]
    with pytest.raises(UnsupportedModelError, match=r"needs self-attention over the image's tokens .* has none; "
                                                    r"methods that work on it: gradcam, gradcam\+\+, "):
        get_method(method)(model)


def test_cli_methods_shows_what_a_method_applies_to() -> None:
    from onnxcam_cli.main import app
    from typer.testing import CliRunner

    out = CliRunner().invoke(app, ["methods"], terminal_width=200).output
    rows = {r.name: r for r in method_info()}
    assert rows["rollout"].applies_to == "global attention" and rows["gradcam"].applies_to == ""
    assert out.count("only for models with: global attention") == 2


def test_an_unknown_cost_class_is_refused() -> None:
    with pytest.raises(ValueError, match="cost_class"):
        MethodSpec("x", cost="?", cost_class="cheap", uses_gradients=False)  # type: ignore[arg-type]


@pytest.mark.parametrize(("text", "name"), [
    ("Grad-CAM", "gradcam"), ("gradcampp", "gradcam++"), ("GradCAMPlusPlus", "gradcam++"),
    ("score_cam", "scorecam"), ("SS-CAM", "sscam"), ("smoothgradcampp", "smoothgradcam++"),
    ("grad-cam-elementwise", "gradcam-elementwise"), ("eigen-cam", "eigencam"),
])
def test_get_method_accepts_spellings_and_aliases(text: str, name: str) -> None:
    assert get_method(text) is METHODS[name]


@pytest.mark.parametrize(("typo", "meant"), [("gradcan", "gradcam"), ("scorcam", "scorecam"),
                                             ("layer-cma", "layercam"), ("ablationcm", "ablationcam")])
def test_a_mistyped_method_gets_did_you_mean(typo: str, meant: str) -> None:
    with pytest.raises(ArgumentError, match=f"did you mean '{meant}'"):
        get_method(typo)


def test_an_unrelated_name_gets_no_guess() -> None:
    with pytest.raises(ArgumentError) as info:
        get_method("resnet")
    assert "did you mean" not in str(info.value) and "gradcam" in str(info.value)


def test_method_info_rows_come_from_the_declarations() -> None:
    rows = {r.name: r for r in method_info()}
    assert set(rows) == set(METHODS)
    assert rows["gradcam"].cost == "1 forward + 1 head backward" and rows["gradcam"].gradients
    assert rows["sscam"].cost == "1 + samples x C forwards" and not rows["sscam"].gradients
    assert [o.name for o in rows["sscam"].options] == ["num_samples", "std", "seed", "max_channels"]
    assert rows["gradcam"].summary.startswith("Grad-CAM (Selvaraju")


def test_slowness_comes_from_the_cost_class() -> None:
    assert {n for n in METHODS if is_slow([n])} == {"scorecam", "sscam", "ablationcam"}
    assert is_slow(["gradcam", "Score-CAM"]) and not is_slow(["gradcam", "smoothgradcam++"])


def test_unique_methods_drops_repeats_in_any_spelling() -> None:
    assert unique_methods(["gradcam", "Grad-CAM", "scorecam", "gradcam"]) == (["gradcam", "scorecam"],
                                                                             ["Grad-CAM", "gradcam"])


def test_parse_method_options_types_and_routes_values() -> None:
    got = parse_method_options(["scorecam.max_channels=64", "num_samples=3", "smoothgradcam++.std=0.5",
                                "smoothgradcam++.torchcam_compat=yes"], ["scorecam", "smoothgradcam++", "gradcam"])
    assert got == {"scorecam": {"max_channels": 64},
                   "smoothgradcam++": {"num_samples": 3, "std": 0.5, "torchcam_compat": True}}
    assert isinstance(got["smoothgradcam++"]["std"], float)


def test_shortcuts_apply_to_every_method_that_has_the_option() -> None:
    got = parse_method_options([], ["scorecam", "sscam", "gradcam"],
                               {"--max-channels": ("max_channels", 32), "--samples": ("num_samples", None)})
    assert got == {"scorecam": {"max_channels": 32}, "sscam": {"max_channels": 32}}


@pytest.mark.parametrize(("assignments", "methods", "shortcuts", "message"), [
    (["max_channels=64"], ["scorecam", "sscam"], {}, "say which, e.g. scorecam.max_channels=64"),
    (["max_channels=x"], ["scorecam"], {}, "scorecam.max_channels takes an integer, got 'x'"),
    (["scorecam.max_channels=2.5"], ["scorecam"], {}, "takes an integer"),
    (["max_channels=-5"], ["scorecam"], {}, "scorecam.max_channels must be >= 1, got -5"),
    (["sscam.std=-1"], ["sscam"], {}, "sscam.std must be >= 0.0"),
    (["sscam.std=nan"], ["sscam"], {}, "sscam.std takes a number, got 'nan'"),
    ([], ["sscam"], {"--noise-std": ("std", float("inf"))}, "sscam.std takes a number, got inf"),
    (["smoothgradcam++.torchcam_compat=maybe"], ["smoothgradcam++"], {}, "takes true or false"),
    ([], ["scorecam"], {"--max-channels": ("max_channels", -5)}, "--max-channels -5: scorecam.max_channels must be"),
    ([], ["gradcam"], {"--max-channels": ("max_channels", 5)}, "none of them is among the methods (gradcam)"),
    (["gradcam.foo=1"], ["gradcam"], {}, "gradcam has no option 'foo'; allowed: none"),
    (["foo=1"], ["gradcam", "sscam"], {}, "allowed: sscam.num_samples, sscam.std, sscam.seed, sscam.max_channels"),
    (["sscam.std=1"], ["gradcam"], {}, "sscam is not among the methods (gradcam)"),
    (["scorecam.max_channels=3", "max_channels=4"], ["scorecam"], {}, "already set to 3"),
    (["nonsense"], ["gradcam"], {}, "write METHOD.OPTION=VALUE"),
    (["scorcam.max_channels=3"], ["scorecam"], {}, "did you mean 'scorecam'"),
])
def test_parse_method_options_errors_name_the_fix(assignments: list[str], methods: list[str],
                                                  shortcuts: dict[str, tuple[str, object]], message: str) -> None:
    with pytest.raises(ArgumentError) as info:
        parse_method_options(assignments, methods, shortcuts)
    assert message in str(info.value)


def test_check_options_converts_a_dict() -> None:
    assert check_options("Score-CAM", {"max_channels": "8"}) == {"max_channels": 8}
    with pytest.raises(ArgumentError, match="must be >= 1"):
        check_options("sscam", {"num_samples": 0})


def test_importing_onnxcam_does_not_load_onnx_or_onnxruntime() -> None:
    code = ("import sys, onnxcam, onnxcam.errors, onnxcam.method_specs; "
            "print(sorted(m for m in ('onnx', 'onnxruntime', 'cv2', 'numpy') if m in sys.modules)); "
            "print(onnxcam.methods.weighted_sum.__name__, onnxcam.GradCAM.name)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT), "PATH": ""}).stdout
    assert out.split("\n")[:2] == ["[]", "weighted_sum gradcam"]  # submodules and names still load on use
    assert onnxcam.GradCAM is METHODS["gradcam"] and "GradCAM" in dir(onnxcam)
    with pytest.raises(AttributeError):
        _ = onnxcam.NoSuchThing  # type: ignore[attr-defined]


def test_readme_methods_table_lists_every_declared_method() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Methods", 1)[1].split("\n## ", 1)[0]
    rows = set(re.findall(r"^\| `([^`]+)` \| `", section, flags=re.M))
    assert rows == set(METHODS)
    for name in METHODS:
        for option in spec_of(name).options:
            assert f"`{option.name}`" in section, f"README's options table lacks {name}.{option.name}"
