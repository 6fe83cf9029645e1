"""What an accuracy search can change, per quantizer: policy switches and layers in float.

Two quantizer families cover the three targets: Q/DQ ONNX made by ONNX Runtime's quantizer
(the ONNX Runtime artifact, and the TensorRT bundle under TensorRT's rules) and NNCF's
FakeQuantize graphs (OpenVINO). Each says

- which switches are worth a try (recipe overrides: Q/DQ placement, types, calibration
  method; NNCF presets and options), relative to the recipe's current policy;
- how a layer is left in floating point in a real build (ONNX Runtime's ``nodes_to_exclude``,
  NNCF's ``IgnoredScope``);
- which layers of a built artifact are quantized, and a *fast* way to run the artifact with some
  of them back in float without re-quantizing (the Q/DQ or FakeQuantize on their inputs
  bypassed), used to rank layers by the error they cause.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from mmedge.quantize.isa import ort_types
from mmedge.recipe import Recipe, with_overrides
from mmedge.targets import Session, SessionConfig
from mmedge.targets.openvino import settings as openvino_settings


@dataclass(frozen=True)
class Switch:
    name: str  # what a user reads in the search report
    overrides: dict[str, Any]  # dotted recipe paths → values


class SearchSpace(Protocol):
    def switches(self, recipe: Recipe) -> list[Switch]: ...

    def keep_float(self, recipe: Recipe, layers: list[str]) -> Recipe: ...

    def quantized_layers(self, artifact: Path) -> list[str]: ...

    def reverted(
        self,
        artifact: Path,
        recipe: Recipe,
        layers: list[str],
        config: SessionConfig,
        fp32_onnx: Path,
    ) -> Session: ...


class QdqSpace:
    """Q/DQ ONNX from ONNX Runtime's quantizer. ``types=False`` for TensorRT, whose rules fix
    the types and the placement: only the calibration method is left to search there."""

    def __init__(self, types: bool = True) -> None:
        self.types = types

    def switches(self, recipe: Recipe) -> list[Switch]:
        q = recipe.quantization
        found: list[Switch] = []
        if self.types:
            current = ort_types(q)
            if q.quantize_weighted_outputs or q.quantize_bias:
                found.append(
                    Switch(
                        "no Q/DQ on weighted-op outputs and biases",
                        {
                            "quantization.quantize_weighted_outputs": False,
                            "quantization.quantize_bias": False,
                        },
                    )
                )
            flip = "int8" if current.activation_type == "uint8" else "uint8"
            found.append(Switch(f"activations {flip}", {"quantization.activation_type": flip}))
            if current.weight_type == "int8" and current.activation_type == "uint8":
                found.append(Switch("weights uint8 (U8U8)", {"quantization.weight_type": "uint8"}))
            if not current.reduce_range:
                found.append(
                    Switch("reduce_range (7-bit weights)", {"quantization.reduce_range": True})
                )
        for method in ("entropy", "percentile"):
            if q.method != method:
                found.append(Switch(f"{method} calibration", {"quantization.method": method}))
        return found

    def keep_float(self, recipe: Recipe, layers: list[str]) -> Recipe:
        merged = sorted(set(recipe.quantization.exclude_nodes) | set(layers))
        return with_overrides(recipe, {"quantization.exclude_nodes": merged})

    def quantized_layers(self, artifact: Path) -> list[str]:
        import onnx

        graph = onnx.load(str(artifact), load_external_data=False).graph
        dq_out = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
        return [
            n.name
            for n in graph.node
            if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
            and n.name
            and any(i in dq_out for i in n.input)
        ]

    def reverted(
        self,
        artifact: Path,
        recipe: Recipe,
        layers: list[str],
        config: SessionConfig,
        fp32_onnx: Path,
    ) -> Session:
        from mmedge.targets.onnxruntime import OrtSession

        edited = without_qdq(artifact, set(layers), fp32_onnx)
        return OrtSession(edited, config.threads, extra_outputs=config.extra_outputs)


def without_qdq(artifact: Path, layers: set[str], fp32_onnx: Path) -> bytes:
    """The Q/DQ model with ``layers`` reading float inputs: an activation input is rewired past
    its DequantizeLinear(QuantizeLinear(x)) pair to x; a quantized weight is replaced by the
    FP32 model's (ONNX Runtime names it ``<weight>_quantized``), or else by its dequantized
    values."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(artifact))
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    inits = {i.name: i for i in graph.initializer}
    fp32 = {i.name: i for i in onnx.load(str(fp32_onnx)).graph.initializer}
    for node in graph.node:
        if node.name not in layers:
            continue
        for k, tensor in enumerate(node.input):
            dq = producer.get(tensor)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producer.get(dq.input[0])
            original = dq.input[0].removesuffix("_quantized")
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[k] = q.input[0]
            elif original in fp32:
                # Its own name: the dequantized tensor may already carry the original one.
                name = f"{original}_float"
                if name not in inits:
                    inits[name] = onnx.TensorProto()
                    inits[name].CopyFrom(fp32[original])
                    inits[name].name = name
                    graph.initializer.append(inits[name])
                node.input[k] = name
            elif dq.input[0] in inits:
                values = numpy_helper.to_array(inits[dq.input[0]]).astype(np.float32)
                scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float32)
                zero = (
                    numpy_helper.to_array(inits[dq.input[2]]).astype(np.float32)
                    if len(dq.input) > 2 and dq.input[2]
                    else np.zeros_like(scale)
                )
                axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
                if scale.ndim == 1 and scale.size > 1:
                    shape = [1] * values.ndim
                    shape[axis] = -1
                    scale, zero = scale.reshape(shape), zero.reshape(shape)
                name = f"{tensor}_float_for_{node.name}"
                graph.initializer.append(numpy_helper.from_array((values - zero) * scale, name))
                node.input[k] = name
    data: bytes = model.SerializeToString()
    return data


class NncfSpace:
    """OpenVINO IR quantized by NNCF: FakeQuantize ops on the inputs of quantized layers."""

    def switches(self, recipe: Recipe) -> list[Switch]:
        from mmedge.quantize.isa import nncf_overflow_fix

        cfg = openvino_settings(recipe).nncf
        base = "targets.openvino.nncf."
        found = [
            Switch(
                "NNCF preset mixed (asymmetric activations)"
                if cfg.preset != "mixed"
                else "NNCF preset performance",
                {base + "preset": "performance" if cfg.preset == "mixed" else "mixed"},
            ),
        ]
        if cfg.model_type != "default":
            found.append(Switch("NNCF model_type default", {base + "model_type": "default"}))
        if cfg.model_type != "transformer":
            found.append(
                Switch("NNCF model_type transformer", {base + "model_type": "transformer"})
            )
        if cfg.fast_bias_correction:
            found.append(
                Switch("NNCF full bias correction", {base + "fast_bias_correction": False})
            )
        fix, _ = nncf_overflow_fix(recipe)
        other = "disable" if fix == "enable" else "enable"
        found.append(Switch(f"NNCF overflow_fix {other}", {base + "overflow_fix": other}))
        return found

    def keep_float(self, recipe: Recipe, layers: list[str]) -> Recipe:
        cfg = openvino_settings(recipe).nncf
        exact = [f"^{re.escape(name)}$" for name in layers]
        merged = list(dict.fromkeys([*cfg.ignored_patterns, *exact]))
        return with_overrides(recipe, {"targets.openvino.nncf.ignored_patterns": merged})

    def __init__(self) -> None:
        self._fp32: dict[Path, dict[str, Any]] = {}

    def quantized_layers(self, artifact: Path) -> list[str]:
        """Every op with a FakeQuantize or a compressed-weight input: NNCF quantizes the
        activations of residual adds, concats, reductions and normalizations too, and those are
        often where the error is; and a layer whose activation quantizers were moved above a
        concat has only its weights left to show it is quantized."""
        import openvino as ov

        model = ov.Core().read_model(str(artifact))
        return [
            op.get_friendly_name()
            for op in model.get_ordered_ops()
            if op.get_type_name() != "FakeQuantize"
            and any(_quantized_input(i.get_source_output().get_node()) for i in op.inputs())
        ]

    def reverted(
        self,
        artifact: Path,
        recipe: Recipe,
        layers: list[str],
        config: SessionConfig,
        fp32_onnx: Path,
    ) -> Session:
        """FakeQuantize inputs bypassed; compressed INT8 weights (Constant → Convert →
        Multiply in the saved IR) replaced by the FP32 conversion's Constant of the same op."""
        import openvino as ov

        from mmedge.targets.openvino import OvSession

        model = ov.Core().read_model(str(artifact))
        fp32 = self._fp32_ops(fp32_onnx)
        wanted = set(layers)
        for op in model.get_ordered_ops():
            name = op.get_friendly_name()
            if name not in wanted:
                continue
            for k, port in enumerate(op.inputs()):
                source = port.get_source_output().get_node()
                if source.get_type_name() == "FakeQuantize":
                    port.replace_source_output(_unsmoothed(source.input_value(0)))
                elif source.get_type_name() == "Multiply" and name in fp32:
                    original = fp32[name].input_value(k)
                    if original.get_node().get_type_name() == "Constant":
                        port.replace_source_output(original)
            _restore_bias(op, fp32)
        return OvSession(artifact, recipe, "int8", config, model=model)

    def _fp32_ops(self, fp32_onnx: Path) -> dict[str, Any]:
        if fp32_onnx not in self._fp32:
            from mmedge.targets.openvino import convert

            model = convert(fp32_onnx)  # as the OpenVINO target converts it
            self._fp32[fp32_onnx] = {op.get_friendly_name(): op for op in model.get_ops()}
        return self._fp32[fp32_onnx]


def _restore_bias(op: Any, fp32: dict[str, Any]) -> None:
    """NNCF's bias correction folds the quantization error of a layer's *input* into the bias
    Add after it: with that input back in float, the corrected bias is wrong. The FP32 bias
    goes back with the FP32 weights."""
    for target in op.output(0).get_target_inputs():
        add = target.get_node()
        name = add.get_friendly_name()
        if add.get_type_name() != "Add" or name not in fp32:
            continue
        for k, port in enumerate(add.inputs()):
            source = port.get_source_output().get_node()
            original = fp32[name].input_value(k)
            if source.get_type_name() == "Constant" and (
                original.get_node().get_type_name() == "Constant"
            ):
                port.replace_source_output(original)


def _unsmoothed(value: Any) -> Any:
    """The activation before SmoothQuant's scaling (NNCF's transformer preset): the FP32 weights
    that replace the layer's are not divided by that scale (measured: a layer whose revert cost
    28 dB instead of gaining, on tests.models:fragile_fusion)."""
    node = value.get_node()
    while node.get_type_name() == "Multiply" and node.get_friendly_name().endswith(
        "nncf_smooth_quant"
    ):
        value = node.input_value(0)
        node = value.get_node()
    return value


def _quantized_input(node: Any) -> bool:
    """A FakeQuantize, or NNCF's compressed weights (int8 Constant -> Convert -> Multiply named
    `<layer>/fq_weights_<port>` in the saved IR)."""
    kind = node.get_type_name()
    return kind == "FakeQuantize" or (
        kind == "Multiply" and "/fq_weights_" in node.get_friendly_name()
    )
