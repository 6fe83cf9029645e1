"""The little CUDA a TensorRT session needs, through NVIDIA's cuda-python bindings.

cuda-python rather than torch: a device that builds and runs the bundle needs TensorRT and
these bindings, not a PyTorch install. Every call returns ``(error, *values)``; ``_ok`` turns
a non-success code into an error naming the call.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np

from mmedge.errors import DependencyMissing, DeviceUnavailable, TargetBuildError


@cache
def runtime() -> Any:
    """``cuda.bindings.runtime`` (cuda-python >= 12.6) or the older ``cuda.cudart``."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            raise DependencyMissing(
                "the cuda-python bindings are required to run TensorRT engines",
                hint='pip install "mmedge[tensorrt]"',
            ) from None
    return cudart


def _ok(result: Any, call: str) -> Any:
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != runtime().cudaError_t.cudaSuccess:
        name = getattr(err, "name", str(err))
        if call in ("cudaGetDeviceCount", "cudaSetDevice", "cudaGetDeviceProperties"):
            raise DeviceUnavailable(f"no usable CUDA device ({call}: {name})")
        raise TargetBuildError(f"CUDA call {call} failed: {name}")
    return values[0] if len(values) == 1 else values


def device_info(device: int) -> dict[str, str]:
    """GPU name and compute capability: what an engine is specific to."""
    cudart = runtime()
    count = _ok(cudart.cudaGetDeviceCount(), "cudaGetDeviceCount")
    if device >= count:
        raise DeviceUnavailable(f"CUDA device {device} does not exist; this machine has {count}")
    props = _ok(cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return {"gpu": name.strip("\x00 "), "compute_capability": f"{props.major}.{props.minor}"}


class Stream:
    def __init__(self, device: int) -> None:
        cudart = runtime()
        _ok(cudart.cudaSetDevice(device), "cudaSetDevice")
        self.handle = _ok(cudart.cudaStreamCreate(), "cudaStreamCreate")

    def synchronize(self) -> None:
        _ok(runtime().cudaStreamSynchronize(self.handle), "cudaStreamSynchronize")

    def __int__(self) -> int:
        return int(self.handle)

    def close(self) -> None:
        runtime().cudaStreamDestroy(self.handle)


class Buffer:
    """A device allocation of fixed size, with copies to and from NumPy arrays on a stream."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = max(nbytes, 1)
        self.ptr = int(_ok(runtime().cudaMalloc(self.nbytes), "cudaMalloc"))

    def upload(self, array: np.ndarray, stream: Stream) -> None:
        cudart = runtime()
        host = np.ascontiguousarray(array)
        kind = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        _ok(
            cudart.cudaMemcpyAsync(self.ptr, host.ctypes.data, host.nbytes, kind, stream.handle),
            "cudaMemcpyAsync",
        )
        stream.synchronize()  # the host array may be freed once this returns

    def download(self, array: np.ndarray, stream: Stream) -> None:
        cudart = runtime()
        kind = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _ok(
            cudart.cudaMemcpyAsync(array.ctypes.data, self.ptr, array.nbytes, kind, stream.handle),
            "cudaMemcpyAsync",
        )

    def free(self) -> None:
        if self.ptr:
            runtime().cudaFree(self.ptr)
            self.ptr = 0


class Timer:
    """CUDA events around work on a stream: the GPU's own elapsed time, in ms."""

    def __init__(self) -> None:
        cudart = runtime()
        self.start = _ok(cudart.cudaEventCreate(), "cudaEventCreate")
        self.end = _ok(cudart.cudaEventCreate(), "cudaEventCreate")

    def begin(self, stream: Stream) -> None:
        _ok(runtime().cudaEventRecord(self.start, stream.handle), "cudaEventRecord")

    def stop(self, stream: Stream) -> float:
        cudart = runtime()
        _ok(cudart.cudaEventRecord(self.end, stream.handle), "cudaEventRecord")
        _ok(cudart.cudaEventSynchronize(self.end), "cudaEventSynchronize")
        return float(_ok(cudart.cudaEventElapsedTime(self.start, self.end), "cudaEventElapsedTime"))

    def close(self) -> None:
        cudart = runtime()
        cudart.cudaEventDestroy(self.start)
        cudart.cudaEventDestroy(self.end)
