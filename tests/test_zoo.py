"""The zoo matrix in CI: real architectures (tests/zoo.py) through every command.

The same cells as ``python -m benchmarks.zoo_matrix``, whose recorded table the README shows.
A cell fails the test only by failing the command: an accuracy gate that fails on a model with
random weights, or TensorRT rules that name a violation, are measurements. The cells a backend
cannot do are listed with the reason the command gives, so a backend release that fixes one
shows up here (and in the README) instead of going unnoticed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks.zoo_matrix import CELLS, PASSING, Matrix
from tests.zoo import REALISTIC, ZOO

pytest.importorskip("transformers")
pytest.importorskip("torch_pruning")

# OpenVINO's ONNX frontend refuses an AveragePool whose kernel is larger than its input, which
# transformers' EfficientNet pooler is (kernel = hidden_dim with ceil_mode; 1280 over 7x7 at
# B0's own size); ONNX Runtime and TensorRT's parser take it.
BACKEND_LIMITS = {
    ("efficientnet_lstm_gated", "openvino fp32"): "conversion failed for AveragePool",
    ("efficientnet_lstm_gated", "openvino int8"): "conversion failed for AveragePool",
}


@pytest.mark.parametrize("name", list(ZOO))
def test_every_command_works_on(name: str, tmp_path: Path) -> None:
    cells = Matrix(name, tmp_path).run()
    assert list(cells) == list(CELLS)
    failed = {c: f"{v.status}: {v.detail}" for c, v in cells.items() if v.status not in PASSING}
    expected = {c: why for (n, c), why in BACKEND_LIMITS.items() if n == name}
    assert set(failed) == set(expected), failed
    for cell, why in expected.items():
        assert why in cells[cell].detail, (cell, cells[cell].detail)


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("MMEDGE_REALISTIC"),
    reason="realistic sizes take minutes per entry: MMEDGE_REALISTIC=1 runs them",
)
@pytest.mark.parametrize("name", list(REALISTIC))
def test_every_command_works_at_realistic_size(name: str, tmp_path: Path) -> None:
    cells = Matrix(name, tmp_path).run()
    failed = {c: f"{v.status}: {v.detail}" for c, v in cells.items() if v.status not in PASSING}
    assert not failed, failed
