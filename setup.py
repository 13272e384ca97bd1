"""Only here to map the top-level ``cli/`` folder to the import name ``onnxcam_cli``.

pyproject.toml holds all metadata; installing a package literally named ``cli`` would clash with
other projects in site-packages.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["onnxcam", "onnxcam.*"]) + ["onnxcam_cli"],
    package_dir={"onnxcam_cli": "cli"},
)
