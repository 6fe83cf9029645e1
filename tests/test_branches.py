from __future__ import annotations

import onnx
from onnx import helper

from mmedge.branches import branch_of, nodes_by_branch, normalize_node_names, scope_of

BRANCHES = {"text": ["text_encoder"], "attn": ["text_encoder.layers.0.attn"], "fusion": ["head"]}


def _node(name: str, namespace: str | None = None) -> onnx.NodeProto:
    node = helper.make_node("Relu", ["x"], ["y"], name=name)
    if namespace is not None:
        node.metadata_props.add(key="namespace", value=namespace)
    return node


def test_scope_from_torchscript_names() -> None:
    assert (
        scope_of(_node("/text_encoder/layers.0/attn/q_proj/MatMul"))
        == "text_encoder.layers.0.attn.q_proj"
    )
    assert scope_of(_node("/Concat")) == ""


def test_scope_from_dynamo_namespace() -> None:
    ns = (
        ": pkg.Model/text_encoder: pkg.Enc/text_encoder.proj: torch.nn.Linear"
        "/linear: aten.linear.default"
    )
    assert scope_of(_node("node_linear_3", ns)) == "text_encoder.proj"
    assert scope_of(_node("node_cat", ": pkg.Model/cat: aten.cat.default")) == ""


def test_branch_of_matches_at_module_boundaries_longest_first() -> None:
    assert branch_of("text_encoder.layers.0.attn.q_proj", BRANCHES) == "attn"
    assert branch_of("text_encoder.layers.1.ff", BRANCHES) == "text"
    assert branch_of("text_encoder", BRANCHES) == "text"
    assert branch_of("text_encoder2.proj", BRANCHES) == "other"  # not a module boundary
    assert branch_of("heads", BRANCHES) == "other"


def test_normalize_gives_unique_scoped_names() -> None:
    ns = ": pkg.Model/head: pkg.Head/head.fc: torch.nn.Linear/linear: aten.linear"
    graph = helper.make_graph(
        [_node("node_linear", ns), _node("node_linear", ns), _node("", None)], "g", [], []
    )
    model = helper.make_model(graph)
    normalize_node_names(model)
    names = [n.name for n in model.graph.node]
    assert names == ["/head/fc/node_linear", "/head/fc/node_linear_1", "/Relu_2"]
    assert nodes_by_branch(model, BRANCHES)["fusion"] == names[:2]


def test_runtime_layer_names_map_to_branches() -> None:
    from mmedge.branches import time_by_branch

    layers = {
        "/text_encoder/layers.0/attn/q_proj/MatMul": 2.0,
        "image_f32_abcd_bf16_acdb_/head/fc/Conv/WithoutBiases": 0.5,  # an OpenVINO reorder
        "/text_encoder/layers.0/attn/Softmax_f32_bf16_/text_encoder/layers.0/attn/MatMul_1": 1.0,
        "Convert_8715": 0.25,
        "/Concat": 0.125,
    }
    assert time_by_branch(layers, BRANCHES) == {
        "text": 0.0,
        "attn": 3.0,
        "fusion": 0.5,
        "other": 0.375,
    }
