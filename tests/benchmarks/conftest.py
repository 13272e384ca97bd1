"""The scripts here are run by hand (``python tests/benchmarks/<name>.py``), never collected by pytest."""

collect_ignore_glob = ["*.py"]
