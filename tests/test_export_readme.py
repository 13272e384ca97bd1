"""The README's serving snippet runs as printed on an exported EfficientNet-Lite0."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import onnxcam

ROOT = Path(__file__).resolve().parents[1]


def serving_snippet() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Serving explanations", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "README: no python block in 'Serving explanations'"
    return blocks[0]


def test_readme_serving_snippet_runs(tmp_path: Path, build_model) -> None:  # type: ignore[no-untyped-def]
    onnxcam.export_explainer(build_model("efficientnet_lite0"), ["gradcam"], path=tmp_path / "model_cam.onnx")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-c", serving_snippet()], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "(4,) (4, 224, 224) 0.0 1.0"
