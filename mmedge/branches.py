"""Map ONNX nodes back to the recipe's branches (module-name prefixes).

The TorchScript exporter names nodes after their module scope (``/text_encoder/layers.0/...``);
the dynamo exporter names them ``node_Conv_12`` and keeps the scope in a ``namespace`` metadata
entry. After export, dynamo node names are rewritten into the TorchScript form, so every later
step (quantizer exclusion lists, profilers, other backends' layer names) reads one convention.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

import onnx

UNASSIGNED = "other"


def scope_of_name(name: str) -> str:
    """Dotted module path from a scoped name (``/text_encoder/layers.0/attn/MatMul``).

    Runtimes keep those names for their layers, sometimes behind a prefix of their own (an
    OpenVINO layout reorder is ``image_f32_abcd_bf16_acdb_/image_encoder/...``), so the scope
    starts at the first '/'. A name without one has no scope ('').
    """
    start = name.find("/")
    if start < 0:
        return ""
    return ".".join(p for p in name[start:].split("/")[1:-1] if p)


def scope_of(node: onnx.NodeProto) -> str:
    """Dotted module path of the node (``text_encoder.layers.0.attn``), or '' at top level."""
    if node.name.startswith("/"):
        return scope_of_name(node.name)
    for prop in node.metadata_props:
        if prop.key == "namespace":
            return _scope_from_namespace(prop.value)
    return ""


def _scope_from_namespace(value: str) -> str:
    # ": pkg.Model/text_encoder: pkg.Enc/text_encoder.proj: torch.nn.Linear/linear: aten.linear"
    # Segments are "qualified_name: class"; the deepest module segment is the scope.
    segments = [s.split(":")[0].strip() for s in value.split("/")]
    modules = [s for s in segments[1:-1] if s]
    return modules[-1] if modules else ""


def branch_of(scope: str, branches: dict[str, list[str]]) -> str:
    """The branch whose prefix matches the scope at a module boundary (longest prefix wins)."""
    best, best_len = UNASSIGNED, -1
    for branch, prefixes in branches.items():
        for prefix in prefixes:
            if (scope == prefix or scope.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = branch, len(prefix)
    return best


def nodes_by_branch(model: onnx.ModelProto, branches: dict[str, list[str]]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {b: [] for b in [*branches, UNASSIGNED]}
    for node in model.graph.node:
        found[branch_of(scope_of(node), branches)].append(node.name)
    return found


def time_by_branch(
    layer_ms: Mapping[str, float], branches: dict[str, list[str]]
) -> dict[str, float]:
    """Per-layer times (by runtime layer name) summed per branch; unscoped layers go to 'other'."""
    found = dict.fromkeys([*branches, UNASSIGNED], 0.0)
    for name, ms in layer_ms.items():
        found[branch_of(scope_of_name(name), branches)] += ms
    return found


def normalize_node_names(model: onnx.ModelProto) -> None:
    """Give every node a unique, scope-prefixed name (``/image_encoder/conv1/node_Conv_3``)."""
    used: Counter[str] = Counter()
    for i, node in enumerate(model.graph.node):
        base = node.name or f"{node.op_type}_{i}"
        if not base.startswith("/"):
            scope = scope_of(node)
            prefix = "/" + scope.replace(".", "/") if scope else ""
            base = f"{prefix}/{base}"
        used[base] += 1
        node.name = base if used[base] == 1 else f"{base}_{used[base] - 1}"
