"""ONNX Runtime INT8: Q/DQ structure *and* numeric tolerance, per-branch precision, bad input."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from mmedge.branches import nodes_by_branch
from mmedge.compare import output_metrics
from mmedge.data.datasets import open_calibration
from mmedge.errors import InputSpecError, RecipeError
from mmedge.export import export_onnx
from mmedge.model import load_torch_model, torch_runner
from mmedge.quantize.ort import quantize_onnx
from mmedge.quantize.ort_calibration import per_shape_supported
from mmedge.recipe import Recipe, load_recipe
from mmedge.targets.onnxruntime import OrtSession
from tests.conftest import tiny_feeds, write_recipe, write_shards

WEIGHTED = {"Conv", "MatMul", "Gemm", "Gather"}


def _quantize(
    tmp_path: Path, changes: dict[str, object] | None = None
) -> tuple[Recipe, onnx.ModelProto, Path]:
    recipe = load_recipe(write_recipe(tmp_path, changes))
    fp32 = tmp_path / "fp32.onnx"
    export_onnx(load_torch_model(recipe), recipe, fp32)
    out = tmp_path / "int8.onnx"
    quantize_onnx(fp32, out, recipe, open_calibration(recipe))
    return recipe, onnx.load(str(out)), out


def _consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    found: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            found.setdefault(name, []).append(node)
    return found


def _dq_fed(model: onnx.ModelProto, node: onnx.NodeProto) -> list[bool]:
    producers = {o: n for n in model.graph.node for o in n.output}
    return [
        producers.get(i) is not None and producers[i].op_type == "DequantizeLinear"
        for i in node.input
    ]


def test_static_qdq_structure(tmp_path: Path) -> None:
    _, model, _ = _quantize(tmp_path)
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > ops["QuantizeLinear"]
    # Every Conv/Gemm reads dequantized data and weights. An op runs in INT8 when its input
    # comes from DequantizeLinear and its output goes into QuantizeLinear: only weighted op
    # types may, so LayerNorm, Softmax and the attention-mask Add stay in float.
    consumers = _consumers(model)
    float_ops = {"LayerNormalization", "Softmax", "Add", "Mul"}
    checked = Counter()
    for node in model.graph.node:
        fed = _dq_fed(model, node)
        if node.op_type in ("Conv", "Gemm"):
            assert fed[0] and fed[1], f"{node.name} is not fully quantized"
        if node.op_type in float_ops:
            into_q = any(c.op_type == "QuantizeLinear" for c in consumers.get(node.output[0], []))
            assert not (fed[0] and into_q), f"{node.name} ({node.op_type}) runs in INT8"
            checked[node.op_type] += 1
    assert checked["LayerNormalization"] and checked["Softmax"] and checked["Add"]
    # Weights are INT8 per output channel (axis 0 for Conv); activations UINT8 per tensor.
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    conv_weights = [
        n
        for n in model.graph.node
        if n.op_type == "DequantizeLinear"
        and inits.get(n.input[0]) is not None
        and inits[n.input[0]].ndim == 4
    ]
    assert conv_weights
    for dq in conv_weights:
        weight, scale = inits[dq.input[0]], inits[dq.input[1]]
        assert weight.dtype == np.int8 and scale.shape == (weight.shape[0],)
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        assert axis == 0
    q_types = {
        inits[n.input[2]].dtype
        for n in model.graph.node
        if n.op_type == "QuantizeLinear" and n.input[2] in inits
    }
    assert q_types == {np.dtype(np.uint8)}


def test_static_int8_stays_close_to_pytorch(tmp_path: Path) -> None:
    recipe, _, out = _quantize(tmp_path)
    reference = torch_runner(load_torch_model(recipe), recipe.outputs)
    session = OrtSession(out, threads=1)
    feeds = tiny_feeds(16, 12, 24, seed=42)
    metrics = output_metrics(reference(feeds)["logits"], session.run(feeds)["logits"])
    assert metrics.cosine > 0.99 and metrics.sqnr_db > 15, metrics
    assert metrics.nonfinite == 0


def test_keep_fp32_branch_really_stays_float(tmp_path: Path) -> None:
    recipe, model, _ = _quantize(tmp_path, {"quantization.keep_fp32": ["text"]})
    by_branch = nodes_by_branch(model, recipe.branches)
    nodes = {n.name: n for n in model.graph.node}
    text_weighted = [nodes[n] for n in by_branch["text"] if nodes[n].op_type in WEIGHTED]
    image_weighted = [nodes[n] for n in by_branch["image"] if nodes[n].op_type in WEIGHTED]
    assert text_weighted and image_weighted
    assert not any(any(_dq_fed(model, n)) for n in text_weighted), "text must stay FP32"
    assert all(_dq_fed(model, n)[0] for n in image_weighted), "image must still be INT8"
    float_weights = {
        t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT
    }
    assert "text_encoder.tokens.weight" in float_weights


def test_dynamic_quantization(tmp_path: Path) -> None:
    recipe, model, out = _quantize(tmp_path, {"quantization.mode": "dynamic"})
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["DynamicQuantizeLinear"] > 0 or ops["MatMulInteger"] > 0
    reference = torch_runner(load_torch_model(recipe), recipe.outputs)
    feeds = tiny_feeds(8, 8, 16, seed=5)
    metrics = output_metrics(reference(feeds)["logits"], OrtSession(out, 1).run(feeds)["logits"])
    assert metrics.cosine > 0.99, metrics


def test_unknown_exclude_node(tmp_path: Path) -> None:
    with pytest.raises(
        InputSpecError, match=r"exclude_nodes names nodes not in the graph: \['/no/such/Conv'\]"
    ):
        _quantize(tmp_path, {"quantization.exclude_nodes": ["/no/such/Conv"]})


def test_keep_fp32_branch_matching_no_node(tmp_path: Path) -> None:
    changes = {"branches.extra": ["no_such_module"], "quantization.keep_fp32": ["extra"]}
    # Caught when the PyTorch model loads (every prefix must name a module) ...
    with pytest.raises(RecipeError, match=r"branches.extra: prefix 'no_such_module' matches no"):
        _quantize(tmp_path, changes)
    # ... and, for a model given as ONNX, when its nodes are assigned to branches.
    recipe = load_recipe(write_recipe(tmp_path))
    export_onnx(load_torch_model(recipe), recipe, tmp_path / "model.onnx")
    onnx_recipe = load_recipe(
        write_recipe(tmp_path, {**changes, "model.factory": None, "model.path": "model.onnx"})
    )
    with pytest.raises(
        InputSpecError, match=r"keep_fp32 names branch 'extra', but no ONNX node belongs to it"
    ):
        quantize_onnx(
            tmp_path / "model.onnx", tmp_path / "int8.onnx", onnx_recipe,
            open_calibration(onnx_recipe),
        )  # fmt: skip


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_every_method_calibrates_across_shapes(tmp_path: Path, method: str) -> None:
    # The tiny calibration set has two shards of different (seq, frames): ONNX Runtime's
    # histogram calibrators cannot stack those in one pass; mmedge calibrates per shape group.
    recipe = load_recipe(write_recipe(tmp_path, {"quantization.method": method}))
    fp32 = tmp_path / "fp32.onnx"
    export_onnx(load_torch_model(recipe), recipe, fp32)
    details = quantize_onnx(fp32, tmp_path / "int8.onnx", recipe, open_calibration(recipe))
    assert details["calibration_samples"] == 32
    if per_shape_supported():
        assert details["calibration_shape_groups"] == 2
    reference = torch_runner(load_torch_model(recipe), recipe.outputs)
    feeds = tiny_feeds(8, 12, 24, seed=9)
    got = OrtSession(tmp_path / "int8.onnx", 1).run(feeds)["logits"]
    assert output_metrics(reference(feeds)["logits"], got).cosine > 0.99


def test_entropy_differs_from_minmax_on_one_shape(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One shape only, where onnxruntime < 1.27 can run Entropy at all: its quantize_static
    # left the calibrator at 128 bins, a byte-identical MinMax model under `method: entropy`.
    # 20 samples in batches of 8 end in a short batch (the histogram collectors cannot stack
    # it with the others); the single pass of onnxruntime < 1.27 needs equal batches (of 10).
    # Conv only keeps the KL search short. MinMax ranges do not depend on the batching.
    write_shards(tmp_path / "calib", [(20, 8, 16)])
    changes: dict[str, object] = {"quantization.op_types": ["Conv"]}
    recipes = {
        name: load_recipe(
            write_recipe(tmp_path, {**changes, "quantization.method": method, **more})
        )
        for name, method, more in (
            ("minmax", "minmax", {}),
            ("entropy", "entropy", {}),
            ("entropy-batch-10", "entropy", {"calibration.batch": 10}),
        )
    }
    fp32 = tmp_path / "fp32.onnx"
    export_onnx(load_torch_model(recipes["minmax"]), recipes["minmax"], fp32)

    def build(variant: str, name: str) -> tuple[dict[str, Any], bytes]:
        recipe = recipes[variant]
        details = quantize_onnx(fp32, tmp_path / name, recipe, open_calibration(recipe))
        assert details["method"] == recipe.quantization.method
        assert details["calibration_samples"] == 20
        return details, (tmp_path / name).read_bytes()

    _, minmax = build("minmax", "minmax.onnx")
    paths = ["cache"] if per_shape_supported() else []
    for path in [*paths, "single pass"]:  # "single pass": onnxruntime < 1.27's path
        with monkeypatch.context() as patch:
            variant = "entropy"
            if path == "single pass":
                patch.setattr("mmedge.quantize.ort.per_shape_supported", lambda: False)
                variant = "entropy-batch-10"
            details, entropy = build(variant, f"entropy-{path}.onnx")
        assert entropy != minmax, f"{path}: the entropy model is byte-identical to minmax"
        ranges = details["calibration_ranges"]
        assert ranges["tensors"] > 0 and 0 < ranges["narrowed"] <= ranges["tensors"], path
        assert "method_note" not in details, path
    # Where Entropy does pick every tensor's full range (here: forced by ONNX Runtime's 128
    # bins), the artifact is the MinMax one and the manifest says so instead of just "entropy".
    monkeypatch.setattr(
        "mmedge.quantize.ort._calib_options",
        lambda cfg: {"num_bins": 128, "num_quantized_bins": 128},
    )
    details, entropy = build("entropy-batch-10", "entropy-128-bins.onnx")  # on either path
    assert entropy == minmax
    assert details["calibration_ranges"]["narrowed"] == 0
    assert "equal the min/max range" in details["method_note"]
    assert "--method minmax" in details["method_note"]
    assert details["method_note"] in Path(details["quantizer_log"]).read_text()
