"""onnxruntime sessions: provider choice, thread settings, batching.

Every session onnxcam creates comes from ``make_session``, so providers, logging and threads are
decided in one place; callers cache sessions (per model x split x batch size) on their ``Model``.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Literal

import numpy as np
import onnx
import onnxruntime as ort

from onnxcam.errors import ArgumentError, OnnxCamWarning, OnnxRuntimeError, first_line

Device = Literal["auto", "cpu", "cuda"]
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")

# Severity 3 = errors only: a CPU-only machine must not print CUDA provider warnings on every run.
ort.set_default_logger_severity(3)


@functools.cache
def cuda_usable() -> bool:
    """Whether a CUDA session really starts here (probed once per process, silently).

    onnxruntime-gpu lists the CUDA provider even where the CUDA libraries are missing and then
    prints a load error for every session; probing with a tiny model at fatal-only logging keeps
    CPU-only machines quiet.
    """
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    import onnx.helper as h

    node = h.make_node("Identity", ["x"], ["y"])
    graph = h.make_graph([node], "probe", [h.make_tensor_value_info("x", 1, [1])],
                         [h.make_tensor_value_info("y", 1, [1])])
    probe = h.make_model(graph, opset_imports=[h.make_opsetid("", 13)])
    probe.ir_version = 8
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    ort.set_default_logger_severity(4)
    try:
        sess = ort.InferenceSession(probe.SerializeToString(), opts,
                                    providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
        return bool(sess.get_providers()[0] == "CUDAExecutionProvider")
    except Exception:  # any failure to start CUDA means: use the CPU
        return False
    finally:
        ort.set_default_logger_severity(3)


def physical_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS tells it)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return max(1, n)


OPTIMIZATION = {
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
}


def session_options(threads: int | None = None, optimization: str = "all") -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = OPTIMIZATION[optimization]
    opts.intra_op_num_threads = threads or physical_cores()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Workers spin between a run's parallel sections (waking a sleeping one costs more than a small
    # kernel: a detection's crop graph ran 20 % faster, YOLOv8n's forward 7 %, on 2 cores) and stop
    # when the run ends: onnxcam runs several sessions back to back (body, head, gradient graphs),
    # and one session's idle workers spinning on would take the cores the next one needs (left
    # spinning, they slowed the next body run from 30 to 73 ms).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1")
    opts.add_session_config_entry("session.force_spinning_stop", "1")
    return opts


def check_device(device: str) -> Device:
    if device not in DEVICES:
        raise ArgumentError(f"unknown device {device!r}: use one of {', '.join(DEVICES)}")
    return device  # type: ignore[return-value]


#: How to get onnxruntime's CUDA build back after a CPU build was installed over it.
REPAIR_CUDA = "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu"


def gpu_present() -> bool:
    """Whether this machine shows an NVIDIA GPU (its driver or ``nvidia-smi``), whatever onnxruntime can do."""
    return os.path.isdir("/proc/driver/nvidia") or shutil.which("nvidia-smi") is not None


def cuda_install_problem(device: str) -> str | None:
    """Why CUDA cannot be used when it was asked for (``device="cuda"``) or a GPU is present, if the
    reason is the installed onnxruntime itself (no CUDA provider), with how to repair it; else None.

    The usual cause: ``pip install onnxcam`` next to a package that depends on ``onnxruntime``
    replaces the files of ``onnxruntime-gpu`` with the CPU build, and ``pip check`` says nothing.
    """
    if device == "cpu":
        return None
    providers = ort.get_available_providers()
    if "CUDAExecutionProvider" in providers:
        return None
    if device != "cuda" and not gpu_present():
        return None
    what = "--device cuda was asked for" if device == "cuda" else "this machine has an NVIDIA GPU"
    return (f"{what}, but the installed onnxruntime {ort.__version__} has no CUDA provider (providers: "
            f"{', '.join(providers)}): usually another package installed the CPU 'onnxruntime' over "
            f"'onnxruntime-gpu'. Repair the install with: {REPAIR_CUDA}"
            + ("" if device == "cuda" else "; running on the CPU meanwhile (--device cpu silences this)"))


_WARNED: set[str] = set()


def providers_for(device: Device) -> list[str]:
    if device == "cpu":
        return ["CPUExecutionProvider"]
    problem = cuda_install_problem(device)
    if problem is not None and device == "cuda":
        raise OnnxRuntimeError(problem)
    if problem is not None and problem not in _WARNED:
        _WARNED.add(problem)  # once per process, not once per session
        warnings.warn(problem, OnnxCamWarning, stacklevel=3)
    if not cuda_usable():
        if device == "cuda":
            raise OnnxRuntimeError(
                "device='cuda' asked for, but no CUDA session starts here (onnxruntime providers: "
                f"{', '.join(ort.get_available_providers())}; CUDA/cuDNN libraries or GPU missing): install "
                "onnxruntime-gpu with its CUDA requirements, or use --device cpu"
            )
        return ["CPUExecutionProvider"]
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


# Initializers at least this large reach onnxruntime as in-memory buffers (external initializers)
# instead of inside the serialised protobuf: serialising EfficientNet's 19 MB of weights and having
# onnxruntime parse them back cost 20-25 ms per session, passing buffers about 5.
EXTERNAL_BYTES = 1 << 16

_RAW_DTYPES = {
    onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16, onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.INT8: np.int8, onnx.TensorProto.UINT8: np.uint8, onnx.TensorProto.INT16: np.int16,
    onnx.TensorProto.UINT16: np.uint16, onnx.TensorProto.INT32: np.int32, onnx.TensorProto.INT64: np.int64,
}


def _serialise(model: onnx.ModelProto) -> tuple[bytes, list[str], list[np.ndarray]]:
    """The model's bytes with its large raw initializers left out, and those initializers as arrays."""
    big = set()
    for init in model.graph.initializer:
        dtype = _RAW_DTYPES.get(init.data_type)
        if (dtype is not None and init.data_location != onnx.TensorProto.EXTERNAL and init.HasField("raw_data")
                and int(np.prod(init.dims)) * np.dtype(dtype).itemsize >= EXTERNAL_BYTES):
            big.add(init.name)
    if not big or sys.byteorder != "little":  # raw_data is little-endian
        return model.SerializeToString(), [], []
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    names: list[str] = []
    arrays: list[np.ndarray] = []
    for init in copy.graph.initializer:
        if init.name in big:
            arrays.append(np.frombuffer(init.raw_data, dtype=_RAW_DTYPES[init.data_type]).reshape(tuple(init.dims)))
            names.append(init.name)
            init.ClearField("raw_data")
            init.data_location = onnx.TensorProto.EXTERNAL
            entry = init.external_data.add()
            entry.key, entry.value = "location", "onnxcam-in-memory"
    return copy.SerializeToString(), names, arrays


def make_session(
    model: onnx.ModelProto | bytes,
    device: Device = "cpu",
    threads: int | None = None,
    what: str = "model",
    optimization: str = "all",
) -> ort.InferenceSession:
    """An InferenceSession for ``model`` on ``device``.

    ``auto`` tries CUDA and quietly falls back to the CPU if a CUDA session does not start
    (no driver, no GPU); ``cuda`` fails loudly instead.
    """
    data, names, arrays = (model, [], []) if isinstance(model, bytes) else _serialise(model)
    providers = providers_for(device)
    opts = session_options(threads, optimization)
    values = [ort.OrtValue.ortvalue_from_numpy(a) for a in arrays]
    if names:
        opts.add_external_initializers(names, values)
    try:
        sess = ort.InferenceSession(data, sess_options=opts, providers=providers)
    except Exception as exc:  # onnxruntime raises its own untyped exceptions
        if device == "auto" and providers[0] != "CPUExecutionProvider":
            return make_session(model, "cpu", threads, what, optimization)
        raise OnnxRuntimeError(f"onnxruntime could not load the {what}: {first_line(exc)}") from exc
    # onnxruntime reads external initializers from our buffers for the session's whole life.
    sess._onnxcam_buffers = (arrays, values)  # type: ignore[attr-defined]
    if device == "cuda" and sess.get_providers()[0] != "CUDAExecutionProvider":
        raise OnnxRuntimeError(
            f"device='cuda' asked for, but the CUDA provider did not start for the {what}: check the CUDA/cuDNN "
            "install (onnxruntime-gpu's requirements) or use --device cpu"
        )
    return sess


def session_device(sess: ort.InferenceSession) -> str:
    """``cuda`` or ``cpu``: where the session actually runs."""
    return "cuda" if sess.get_providers()[0] == "CUDAExecutionProvider" else "cpu"


def chunks(n: int, batch_size: int) -> Iterator[slice]:
    """Consecutive slices of ``range(n)`` of at most ``batch_size`` items."""
    if batch_size < 1:
        raise ArgumentError(f"batch size must be >= 1, got {batch_size}")
    for start in range(0, n, batch_size):
        yield slice(start, min(n, start + batch_size))


def run(
    sess: ort.InferenceSession,
    feeds: Mapping[str, np.ndarray],
    outputs: Sequence[str] | None = None,
    what: str = "model",
) -> list[np.ndarray]:
    """One ``sess.run`` with onnxruntime's failures turned into ``OnnxRuntimeError``."""
    try:
        return list(sess.run(list(outputs) if outputs is not None else None, dict(feeds)))
    except Exception as exc:  # onnxruntime raises its own untyped exceptions
        shapes = ", ".join(f"{k}{tuple(v.shape)}" for k, v in feeds.items())
        raise OnnxRuntimeError(f"onnxruntime failed running the {what} on {shapes}: {first_line(exc)}") from exc


def run_batched(
    sess: ort.InferenceSession,
    feeds: Mapping[str, np.ndarray],
    outputs: Sequence[str] | None = None,
    batch_size: int = 16,
    what: str = "model",
    fixed_batch: int | None = None,
) -> list[np.ndarray]:
    """Run ``sess`` over feeds split along axis 0 in chunks of ``batch_size``; outputs concatenated.

    Every feed must share the same leading (batch) dimension. ``fixed_batch``: the model only
    accepts exactly that many rows, so every chunk is that size, the last one padded with copies of
    its last row and the padding cut from the outputs.
    """
    sizes = {v.shape[0] for v in feeds.values()}
    if len(sizes) != 1:
        raise ArgumentError(f"feeds have different batch sizes {sorted(sizes)}; they must share axis 0")
    n = sizes.pop()
    if fixed_batch is not None:
        batch_size = fixed_batch
    if n == batch_size or (n < batch_size and fixed_batch is None):
        return run(sess, feeds, outputs, what)
    parts: list[list[np.ndarray]] = []
    for sl in chunks(n, batch_size):
        chunk = {k: v[sl] for k, v in feeds.items()}
        m = sl.stop - sl.start
        if fixed_batch is not None and m < fixed_batch:
            chunk = {k: np.concatenate([v, np.repeat(v[-1:], fixed_batch - m, axis=0)]) for k, v in chunk.items()}
        parts.append([o[:m] for o in run(sess, chunk, outputs, what)])
    return [np.concatenate([p[i] for p in parts], axis=0) for i in range(len(parts[0]))]
