"""numpy's BLAS on one thread while onnxcam works, so that onnxruntime keeps the cores.

OpenBLAS (what numpy's wheels link) keeps its worker threads spinning after a multi-threaded call,
for about 0.1 s at its default timeout. A matrix product in onnxcam's numpy work (Grad-CAM's
``(N, C) @ (C, h*w)`` for several detections, EigenCAM's SVD) then left a core busy through the
next onnxruntime run, which ran on what was left. Measured on a 2-core machine: YOLOv8n's body run
took 31 ms after a forward and 41 ms after Grad-CAM of five detections; with BLAS on one thread,
31 ms after both. onnxcam's products are small, so one thread loses little, and the cores go to
onnxruntime, which does the heavy work.

The limit holds only inside ``one_blas_thread()`` (the explainers' calls, the jobs): a user's own
numpy keeps its threads. Without threadpoolctl (a dependency, but its absence is survivable) the
context does nothing.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any


@functools.cache
def _controller() -> Any:
    # Scanning the loaded libraries takes milliseconds: once per process. BLAS libraries loaded
    # later (another package's) are not limited, which costs speed, never correctness.
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - a dependency; only a broken install lacks it
        return None
    return ThreadpoolController()


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """Within the block, numpy's BLAS (OpenBLAS, MKL, BLIS) runs on one thread; restored after.
    Nested blocks are fine. Costs a few microseconds."""
    controller = _controller()
    if controller is None:
        yield
        return
    with controller.limit(limits=1, user_api="blas"):
        yield


__all__ = ["one_blas_thread"]
