"""The TensorRT rule checker on small graphs built in code: one rule broken at a time."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mmedge.targets.tensorrt.rules import Finding, check_model

BRANCHES = {"image": ["image_encoder"], "head": ["head"]}
Edit = Callable[["_Net"], None]


class _Net:
    """image -> Q/DQ -> Conv(DQ int8 weights, per channel) -> Relu -> output, TensorRT-style."""

    def __init__(self) -> None:
        f32 = np.float32
        self.inits = {
            "x_scale": np.array(0.05, f32),
            "x_zp": np.array(0, np.int8),
            "w_q": np.ones((4, 2, 3, 3), np.int8),
            "w_scale": np.full(4, 0.01, f32),
            "w_zp": np.zeros(4, np.int8),
        }
        self.nodes = [
            helper.make_node(
                "QuantizeLinear", ["x", "x_scale", "x_zp"], ["xq"], name="/image_encoder/q"
            ),
            helper.make_node(
                "DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xd"], name="/image_encoder/dq"
            ),
            helper.make_node(
                "DequantizeLinear",
                ["w_q", "w_scale", "w_zp"],
                ["w"],
                name="/image_encoder/conv/w_dq",
                axis=0,
            ),
            helper.make_node("Conv", ["xd", "w"], ["c"], name="/image_encoder/conv/Conv"),
            helper.make_node("Relu", ["c"], ["y"], name="/image_encoder/Relu"),
        ]
        self.outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])]
        self.opset = 19

    def node(self, name: str) -> onnx.NodeProto:
        return next(n for n in self.nodes if n.name.endswith(name))

    def model(self) -> onnx.ModelProto:
        inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, 8])]
        inits = [numpy_helper.from_array(v, k) for k, v in self.inits.items()]
        graph = helper.make_graph(self.nodes, "g", inputs, self.outputs, inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])


def _check(edit: Edit | None = None, kept: list[str] | None = None) -> list[Finding]:
    net = _Net()
    if edit is not None:
        edit(net)
    return check_model(net.model(), BRANCHES, kept or [])


def _rules(findings: list[Finding]) -> set[tuple[str, str]]:
    return {(f.severity, f.rule) for f in findings}


def test_a_tensorrt_style_graph_is_clean() -> None:
    assert _check() == []


def test_non_zero_zero_point() -> None:
    found = _check(lambda n: n.inits.__setitem__("x_zp", np.array(3, np.int8)))
    assert ("error", "zero-point") in _rules(found)
    assert {f.node for f in found if f.rule == "zero-point"} == {
        "/image_encoder/q",
        "/image_encoder/dq",
    }
    assert all(f.branch == "image" for f in found)


def test_uint8_and_missing_zero_points() -> None:
    uint8 = _check(lambda n: n.inits.__setitem__("x_zp", np.array(128, np.uint8)))
    assert any("zero point is UINT8" in f.message for f in uint8)

    def drop(net: _Net) -> None:
        del net.node("/image_encoder/q").input[2]

    missing = _check(drop)
    assert any("defaults to UINT8" in f.message for f in missing)


def test_weight_scales_on_the_wrong_axis() -> None:
    def wrong_axis(net: _Net) -> None:
        net.inits["w_scale"] = np.full(2, 0.01, np.float32)
        net.inits["w_zp"] = np.zeros(2, np.int8)
        net.node("w_dq").attribute[0].i = 1

    found = _check(wrong_axis)
    assert ("error", "weight-axis") in _rules(found)
    assert "expects the output-channel axis 0 for Conv" in next(
        f.message for f in found if f.rule == "weight-axis"
    )


def test_per_tensor_weights_are_a_warning() -> None:
    def per_tensor(net: _Net) -> None:
        net.inits["w_scale"] = np.array(0.01, np.float32)
        net.inits["w_zp"] = np.array(0, np.int8)

    assert _rules(_check(per_tensor)) == {("warning", "weight-per-tensor")}


def test_per_channel_activation_scales() -> None:
    def per_channel(net: _Net) -> None:
        net.inits["x_scale"] = np.full(2, 0.05, np.float32)
        net.inits["x_zp"] = np.zeros(2, np.int8)

    assert ("error", "activation-per-channel") in _rules(_check(per_channel))


def test_one_sided_quantization_of_a_weighted_op() -> None:
    def data_in_float(net: _Net) -> None:
        net.node("/Conv").input[0] = "x"

    found = _check(data_in_float)
    assert ("warning", "one-sided-qdq") in _rules(found)
    # Kept-FP32 branches are not asked to be quantized.
    assert ("warning", "one-sided-qdq") not in _rules(_check(data_in_float, kept=["image"]))


def test_quantized_output_of_a_weighted_op() -> None:
    def quantize_output(net: _Net) -> None:
        net.nodes[-1] = helper.make_node(
            "QuantizeLinear", ["c", "x_scale", "x_zp"], ["cq"], name="/image_encoder/cq"
        )
        net.nodes.append(
            helper.make_node(
                "DequantizeLinear", ["cq", "x_scale", "x_zp"], ["y"], name="/image_encoder/cdq"
            )
        )

    assert ("warning", "quantized-output") in _rules(_check(quantize_output))


def test_quantized_layernorm_and_mixed_add() -> None:
    def layernorm(net: _Net) -> None:
        net.inits.update(g=np.ones(6, np.float32), b=np.zeros(6, np.float32))
        net.nodes[-1] = helper.make_node(
            "LayerNormalization", ["xd", "g", "b"], ["ln"], name="/image_encoder/ln"
        )
        net.nodes += [
            helper.make_node(
                "QuantizeLinear", ["ln", "x_scale", "x_zp"], ["lq"], name="/image_encoder/lq"
            ),
            helper.make_node(
                "DequantizeLinear", ["lq", "x_scale", "x_zp"], ["ld"], name="/image_encoder/ld"
            ),
            helper.make_node("Add", ["ld", "x"], ["y"], name="/head/Add"),
        ]

    found = _check(layernorm)
    assert {("warning", "quantized-normalization"), ("warning", "mixed-add")} <= _rules(found)
    assert next(f.branch for f in found if f.rule == "mixed-add") == "head"


def test_concat_of_differently_scaled_inputs() -> None:
    def concat(net: _Net) -> None:
        net.inits["s2"] = np.array(0.5, np.float32)
        net.nodes[-1] = helper.make_node("QuantizeLinear", ["x", "s2", "x_zp"], ["x2q"], name="/q2")
        net.nodes += [
            helper.make_node("DequantizeLinear", ["x2q", "s2", "x_zp"], ["x2d"], name="/dq2"),
            helper.make_node("Concat", ["xd", "x2d"], ["y"], name="/Concat", axis=1),
        ]

    found = _check(concat)
    assert ("warning", "concat-scales") in _rules(found)
    assert next(f.branch for f in found if f.rule == "concat-scales") == "other"


def test_q_without_dq() -> None:
    def dangling(net: _Net) -> None:
        net.nodes[-1] = helper.make_node("Relu", ["xq"], ["y"], name="/image_encoder/Relu")

    assert ("error", "q-without-dq") in _rules(_check(dangling))


def test_ops_tensorrt_rejects() -> None:
    def unsupported(net: _Net) -> None:
        net.nodes[-1] = helper.make_node("Unique", ["c"], ["y"], name="/head/Unique")

    found = _check(unsupported)
    assert ("error", "unsupported-op") in _rules(found)
    assert next(f for f in found if f.rule == "unsupported-op").branch == "head"

    def custom(net: _Net) -> None:
        net.nodes[-1] = helper.make_node(
            "FusedConv", ["c"], ["y"], name="/head/fc", domain="com.microsoft"
        )

    assert any(
        "com.microsoft::FusedConv is not an ONNX operator" in f.message for f in _check(custom)
    )

    def old_opset(net: _Net) -> None:
        net.opset = 8

    assert ("error", "opset") in _rules(_check(old_opset))


def test_errors_come_first() -> None:
    def both(net: _Net) -> None:
        net.inits["w_scale"] = np.array(0.01, np.float32)  # warning: per-tensor weights
        net.inits["w_zp"] = np.array(0, np.int8)
        net.inits["x_zp"] = np.array(1, np.int8)  # errors

    found = _check(both)
    severities = [f.severity for f in found]
    assert severities == sorted(severities, key=lambda s: s != "error") and severities[0] == "error"
