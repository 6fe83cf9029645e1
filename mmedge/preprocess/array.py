"""Precomputed ``.npy`` arrays, one per sample, read without pickles."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mmedge.preprocess.errors import SampleError, naming
from mmedge.preprocess.spec import ArrayPrep

# np.load's failures on a bad file: EOFError is an empty (zero-byte) one, which is neither an
# OSError nor a ValueError
_READ_ERRORS = (OSError, ValueError, EOFError)


class ArrayField:
    def __init__(self, spec: ArrayPrep, dtype: str, shape: list[int | str]) -> None:
        self.spec = spec
        self.dtype = dtype
        self.shape = shape[1:]  # without the batch axis

    @property
    def inputs(self) -> list[str]:
        return [self.spec.input]

    def length(self, value: Path | str) -> int | None:
        return None

    def shape_of(self, value: Path | str) -> tuple[int, ...]:
        """The array's shape from its header only (memory-mapped), for grouping by shape."""
        try:
            return tuple(np.load(value, mmap_mode="r", allow_pickle=False).shape)
        except _READ_ERRORS as err:
            raise SampleError(f"cannot read array: {naming(value, err)}") from None

    def process(self, value: Path | str, bucket: int | None) -> dict[str, np.ndarray]:
        try:
            array = np.load(value, allow_pickle=False)
        except _READ_ERRORS as err:
            raise SampleError(f"cannot read array: {naming(value, err)}") from None
        if array.ndim != len(self.shape) or any(
            isinstance(d, int) and d != s for d, s in zip(self.shape, array.shape, strict=False)
        ):
            raise SampleError(
                f"array shape {list(array.shape)} does not fit input {self.spec.input!r} "
                f"{self.shape} (per sample, without the batch axis)"
            )
        return {self.spec.input: array.astype(self.dtype, copy=False)}

    def zeros(self, bucket: int | None) -> dict[str, np.ndarray]:
        if not all(isinstance(d, int) for d in self.shape):
            raise SampleError(
                f"cannot zero-fill {self.spec.input!r}: its shape {self.shape} has dynamic axes"
            )
        return {self.spec.input: np.zeros([int(d) for d in self.shape], self.dtype)}
