"""Check an ONNX graph against what TensorRT's parser accepts and its explicit-quantization rules.

Errors are what TensorRT rejects or builds wrong; warnings are placements that cost accuracy or
speed. Every finding names the node and the branch it belongs to, so a user sees *where*.
Sources: onnx-tensorrt's operator matrix (TensorRT 10.15) and TensorRT's Q/DQ placement rules:
symmetric INT8 (zero point 0), per-channel weight scales on the output-channel axis, per-tensor
activation scales, Q/DQ at the inputs of Conv/MatMul/Gemm, normalizations left unquantized.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx
from onnx import numpy_helper

from mmedge.branches import branch_of, scope_of
from mmedge.findings import Finding, Severity, summary

__all__ = ["Finding", "check_model", "summary"]


# onnx-tensorrt docs/operators.md (TensorRT 10.15): operators marked N.
UNSUPPORTED_OPS = frozenset(
    {
        "AffineGrid",
        "Bernoulli",
        "BitShift",
        "BitwiseAnd",
        "BitwiseNot",
        "BitwiseOr",
        "BitwiseXor",
        "CenterCropPad",
        "Col2Im",
        "Compress",
        "ConcatFromSequence",
        "ConvInteger",
        "DFT",
        "Det",
        "DynamicQuantizeLinear",
        "ImageDecoder",
        "MatMulInteger",
        "MaxRoiPool",
        "MaxUnpool",
        "MelWeightMatrix",
        "Multinomial",
        "NegativeLogLikelihoodLoss",
        "Optional",
        "OptionalGetElement",
        "OptionalHasElement",
        "QLinearConv",
        "QLinearMatMul",
        "RegexFullMatch",
        "SequenceAt",
        "SequenceConstruct",
        "SequenceEmpty",
        "SequenceErase",
        "SequenceInsert",
        "SequenceLength",
        "SequenceMap",
        "SoftmaxCrossEntropyLoss",
        "SplitToSequence",
        "StringConcat",
        "StringNormalizer",
        "StringSplit",
        "TfIdfVectorizer",
        "Unique",
    }
)
OPSET_RANGE = (9, 24)  # TensorRT 10.15's parser; 10.0 read up to 20
WEIGHTED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
HIGH_PRECISION_OPS = ("LayerNormalization", "Softmax")
_QUANTIZED_TYPES = {onnx.TensorProto.INT8, onnx.TensorProto.INT4, onnx.TensorProto.FLOAT8E4M3FN}


class _Graph:
    """Producers, consumers and constants of one graph, looked up by tensor name."""

    def __init__(self, model: onnx.ModelProto, branches: dict[str, list[str]]) -> None:
        self.model = model
        self.branches = branches
        self.inits = {t.name: t for t in model.graph.initializer}
        self.producer = {o: n for n in model.graph.node for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in model.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)

    def const(self, name: str) -> np.ndarray | None:
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            return numpy_helper.to_array(node.attribute[0].t)
        return None

    def from_dq(self, name: str) -> onnx.NodeProto | None:
        node = self.producer.get(name)
        return node if node is not None and node.op_type == "DequantizeLinear" else None

    def branch(self, node: onnx.NodeProto) -> str:
        """A node's branch; Q/DQ nodes a quantizer inserted (named after tensors, not modules)
        belong to the branch of the op they feed."""
        scope = scope_of(node)
        seen = 0
        while not scope and node.op_type in ("QuantizeLinear", "DequantizeLinear") and seen < 4:
            users = self.consumers.get(node.output[0], [])
            if not users:
                break
            node, seen = users[0], seen + 1
            scope = scope_of(node)
        return branch_of(scope, self.branches)

    def finding(self, severity: Severity, rule: str, node: onnx.NodeProto, message: str) -> Finding:
        return Finding(severity, rule, node.name, self.branch(node), message)


def _axis(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), 1)


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def check_ops(g: _Graph) -> Iterator[Finding]:
    for imp in g.model.opset_import:
        if imp.domain in ("", "ai.onnx") and not OPSET_RANGE[0] <= imp.version <= OPSET_RANGE[1]:
            yield Finding(
                "error",
                "opset",
                "(model)",
                "other",
                f"opset {imp.version} is outside what TensorRT's ONNX parser reads "
                f"({OPSET_RANGE[0]} to {OPSET_RANGE[1]} in TensorRT 10.15)",
            )
    for node in g.model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            yield g.finding(
                "error",
                "custom-op",
                node,
                f"{node.domain}::{node.op_type} is not an ONNX operator; TensorRT "
                "needs a plugin for it",
            )
        elif node.op_type in UNSUPPORTED_OPS:
            yield g.finding(
                "error",
                "unsupported-op",
                node,
                f"{node.op_type} is not supported by TensorRT's ONNX parser",
            )


def check_qdq_params(g: _Graph) -> Iterator[Finding]:
    """Zero points present, INT8, all zero; scales constant and positive; Q feeds DQ."""
    for node in g.model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        scale = g.const(node.input[1])
        if scale is None or not np.all(scale > 0):
            yield g.finding("error", "scale", node, "scale must be a positive constant")
        zp_name = node.input[2] if len(node.input) > 2 else ""
        zp = g.inits.get(zp_name)
        if zp is None:
            yield g.finding(
                "error",
                "zero-point",
                node,
                "no zero point: ONNX then defaults to UINT8, which TensorRT does not quantize to",
            )
        elif zp.data_type not in _QUANTIZED_TYPES:
            kind = onnx.TensorProto.DataType.Name(zp.data_type)
            yield g.finding(
                "error",
                "zero-point",
                node,
                f"zero point is {kind}; TensorRT quantizes to signed INT8 (or FP8/INT4)",
            )
        elif np.any(numpy_helper.to_array(zp) != 0):
            yield g.finding(
                "error",
                "zero-point",
                node,
                "zero point is not 0: TensorRT quantization is symmetric",
            )
        if node.op_type == "QuantizeLinear":
            users = g.consumers.get(node.output[0], [])
            if any(u.op_type != "DequantizeLinear" for u in users):
                yield g.finding(
                    "error",
                    "q-without-dq",
                    node,
                    "a QuantizeLinear output reaches a non-DequantizeLinear op",
                )


def _weight_axis(node: onnx.NodeProto, rank: int) -> int:
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        return 0 if _attr(node, "transB", 0) else 1
    return rank - 1  # MatMul: [..., K, N], N is the output channel


def check_scale_granularity(g: _Graph) -> Iterator[Finding]:
    """Weights per output channel on the right axis; activations per tensor."""
    for node in g.model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in g.inits:
            scale = g.const(node.input[1])
            if scale is not None and scale.size > 1:
                yield g.finding(
                    "error",
                    "activation-per-channel",
                    node,
                    "activation scales must be per tensor for TensorRT",
                )
        if node.op_type not in WEIGHTED_OPS or len(node.input) < 2:
            continue
        dq = g.from_dq(node.input[1])
        if dq is None or dq.input[0] not in g.inits:
            continue
        weight = g.inits[dq.input[0]]
        scale = g.const(dq.input[1])
        if scale is None or scale.size <= 1:
            yield g.finding(
                "warning",
                "weight-per-tensor",
                node,
                "weights quantized per tensor; per-channel scales keep more accuracy",
            )
            continue
        want = _weight_axis(node, len(weight.dims))
        got = _axis(dq) % len(weight.dims)
        if got != want:
            yield g.finding(
                "error",
                "weight-axis",
                node,
                f"weight scales are on axis {got}; TensorRT expects the output-channel "
                f"axis {want} for {node.op_type}",
            )


def check_placement(g: _Graph, kept_fp32: set[str]) -> Iterator[Finding]:
    """Q/DQ where TensorRT can use it: both inputs of weighted ops, neither side of a float op."""
    for node in g.model.graph.node:
        branch = g.branch(node)
        fed = [g.from_dq(name) is not None for name in node.input[:2]]
        producer = g.producer.get(node.input[0]) if node.input else None
        if (
            node.op_type == "QuantizeLinear"
            and producer is not None
            and producer.op_type in WEIGHTED_OPS
        ):
            yield g.finding(
                "warning",
                "quantized-output",
                node,
                f"the output of {producer.op_type} {producer.name} is quantized; "
                "TensorRT places Q/DQ at inputs, and this blocks fusing the bias, "
                "activation or residual that follows",
            )
        if node.op_type in WEIGHTED_OPS and len(fed) == 2 and branch not in kept_fp32:
            if fed[0] != fed[1]:
                side = "data" if fed[1] else "weight"
                yield g.finding(
                    "warning",
                    "one-sided-qdq",
                    node,
                    f"only one input is quantized (the {side} input is not); TensorRT "
                    "runs it in float and the Q/DQ pair is wasted",
                )
            elif not any(fed):
                yield g.finding(
                    "warning",
                    "unquantized",
                    node,
                    f"{node.op_type} has no Q/DQ inputs and runs in float",
                )
        if node.op_type in HIGH_PRECISION_OPS and fed[0]:
            users = g.consumers.get(node.output[0], [])
            if any(u.op_type == "QuantizeLinear" for u in users):
                yield g.finding(
                    "warning",
                    "quantized-normalization",
                    node,
                    f"{node.op_type} runs between Q/DQ pairs; keep it in higher "
                    "precision (accuracy)",
                )
        if node.op_type == "Add" and len(fed) == 2 and fed[0] != fed[1]:
            yield g.finding(
                "warning",
                "mixed-add",
                node,
                "one Add input is dequantized and the other is not; TensorRT inserts "
                "a reformat instead of fusing the add",
            )
        if node.op_type == "Concat":
            scales = [g.const(dq.input[1]) for dq in (g.from_dq(i) for i in node.input) if dq]
            values = {float(s.ravel()[0]) for s in scales if s is not None and s.size == 1}
            if len(values) > 1:
                yield g.finding(
                    "warning",
                    "concat-scales",
                    node,
                    "Concat inputs carry different INT8 scales, so TensorRT must "
                    "requantize; quantize after the concat instead",
                )


def check_model(
    model: onnx.ModelProto, branches: dict[str, list[str]], kept_fp32: list[str]
) -> list[Finding]:
    """Every finding for this graph, errors first."""
    g = _Graph(model, branches)
    found = [*check_ops(g), *check_qdq_params(g), *check_scale_granularity(g)]
    if any(n.op_type == "QuantizeLinear" for n in model.graph.node):
        found += check_placement(g, set(kept_fp32))
    return sorted(found, key=lambda f: (f.severity != "error", f.rule, f.node))
