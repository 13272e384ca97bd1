"""onnxcam's numpy work runs BLAS on one thread (``onnxcam.blas_threads``): OpenBLAS's idle workers
spin after a multi-threaded call and would take the cores the next onnxruntime run needs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from graphs import residual_net, save
from threadpoolctl import ThreadpoolController, threadpool_limits

import onnxcam
from onnxcam.blas_threads import one_blas_thread


def _blas_threads() -> list[int]:
    """Threads of numpy's own BLAS (a wheel's, under numpy's folder; OpenCV's wheel carries another
    OpenBLAS that onnxcam's numpy work never calls)."""
    return [int(lib["num_threads"]) for lib in ThreadpoolController().info()
            if lib["user_api"] == "blas" and "numpy" in Path(lib["filepath"]).parent.name]


def test_one_blas_thread_limits_and_restores() -> None:
    assert _blas_threads(), "numpy's wheel carries its OpenBLAS in numpy.libs: threadpoolctl should see it"
    with threadpool_limits(limits=2, user_api="blas"):
        before = _blas_threads()
        assert before and all(n == 2 for n in before)
        with one_blas_thread():
            assert all(n == 1 for n in _blas_threads())
            with one_blas_thread():  # nested: still one, and the outer block's limit comes back
                assert all(n == 1 for n in _blas_threads())
            assert all(n == 1 for n in _blas_threads())
        assert _blas_threads() == before


def test_explain_does_its_numpy_work_on_one_blas_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _blas_threads(), "numpy's wheel carries its OpenBLAS in numpy.libs: threadpoolctl should see it"
    import onnxcam.methods as methods

    seen: list[list[int]] = []
    real = methods.weighted_sum

    def spy(acts: np.ndarray, weights: np.ndarray) -> np.ndarray:
        seen.append(_blas_threads())
        return real(acts, weights)

    monkeypatch.setattr(methods, "weighted_sum", spy)
    model = onnxcam.load(save(residual_net(), tmp_path / "m.onnx"))
    x = np.random.default_rng(0).normal(size=model.input.shape(2)).astype(np.float32)
    with threadpool_limits(limits=2, user_api="blas"):
        onnxcam.GradCAM(model)(x, targets=[0, 1])
        assert all(n == 2 for n in _blas_threads())
    assert seen and all(n == 1 for threads in seen for n in threads)
