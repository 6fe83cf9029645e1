"""Reading an ONNX file a user named: "not an ONNX model" said as such, not as a graph with
no inputs (an empty file parses as an empty ModelProto)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from mmedge.errors import MmedgeError, ModelLoadError

if TYPE_CHECKING:
    import onnx


def read_onnx(
    path: Path, error: type[MmedgeError] = ModelLoadError, external_data: bool = False
) -> onnx.ModelProto:
    import onnx

    if not path.is_file():
        raise error(f"ONNX file not found: {path}")
    size = path.stat().st_size
    if size == 0:
        raise error(f"{path} is empty (0 bytes), not an ONNX model")
    try:
        model = onnx.load(str(path), load_external_data=external_data)
    except Exception as err:  # protobuf's DecodeError, or a missing external-data file
        raise error(
            f"{path} is not an ONNX model ({type(err).__name__}: {str(err)[:200]})"
        ) from None
    if model.ir_version == 0 or not model.graph.node:
        raise error(f"{path} is not an ONNX model: it parses to no graph ({size} bytes)")
    return model
