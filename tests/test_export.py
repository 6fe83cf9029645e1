from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from mmedge.branches import nodes_by_branch
from mmedge.errors import TargetBuildError
from mmedge.export import check_parity, export_onnx, trace_feeds
from mmedge.model import load_torch_model, torch_runner
from mmedge.recipe import load_recipe
from mmedge.targets.onnxruntime import OrtSession
from tests.conftest import tiny_feeds, write_recipe


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_export_keeps_names_axes_and_branch_scopes(tmp_path: Path, exporter: str) -> None:
    recipe = load_recipe(
        write_recipe(tmp_path, {"export.exporter": exporter, "export.fallback": False})
    )
    model = load_torch_model(recipe)
    out = tmp_path / "model.onnx"
    result = export_onnx(model, recipe, out)
    assert result.exporter == exporter and result.fallback_reason is None

    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    assert [i.name for i in proto.graph.input] == ["image", "input_ids", "attention_mask", "audio"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    dims = {
        i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
        for i in proto.graph.input
    }
    assert isinstance(dims["audio"][0], str) and isinstance(dims["audio"][2], str)
    assert dims["audio"][1] == 4 and dims["image"][1:] == [1, 8, 8]
    assert dims["input_ids"][1] == dims["attention_mask"][1], "seq is one shared axis"

    by_branch = nodes_by_branch(proto, recipe.branches)
    for branch in ("image", "text", "audio", "fusion"):
        assert by_branch[branch], f"no ONNX node maps back to branch {branch}"
    ops = {n.op_type for n in proto.graph.node if n.name in by_branch["image"]}
    assert "Conv" in ops
    assert len({n.name for n in proto.graph.node}) == len(proto.graph.node), "names are unique"
    assert not any(n.metadata_props for n in proto.graph.node), "exporter debug data is dropped"

    # The same file runs at shapes other than the traced ones and matches PyTorch there.
    session = OrtSession(out, threads=1)
    reference = torch_runner(model, recipe.outputs)
    for n, seq, frames in [(1, 4, 8), (5, 16, 32), (3, 11, 13)]:
        feeds = tiny_feeds(n, seq, frames, seed=n)
        np.testing.assert_allclose(
            session.run(feeds)["logits"], reference(feeds)["logits"], atol=1e-5, rtol=1e-4
        )


def test_trace_feeds_avoid_size_one_axes(tmp_path: Path) -> None:
    recipe = load_recipe(write_recipe(tmp_path, {"axes.batch": {"min": 1, "opt": 1, "max": 16}}))
    assert trace_feeds(recipe)["image"].shape[0] == 2


def test_parity_catches_a_baked_in_axis(tmp_path: Path) -> None:
    # dynamo refuses the Python-float use of a dynamic size; TorchScript traces it as a constant,
    # and only the parity check at other shapes can notice.
    recipe = load_recipe(write_recipe(tmp_path, {"model.factory": "tests.models:baked_frames"}))
    model = load_torch_model(recipe)
    out = tmp_path / "model.onnx"
    result = export_onnx(model, recipe, out)
    with pytest.raises(
        TargetBuildError, match=r"output 'logits' differs from PyTorch at (min|max) shapes"
    ):
        check_parity(model, out, recipe)
    assert result.exporter in ("torchscript", "dynamo")


def test_parity_passes_and_reports_each_case(tmp_path: Path) -> None:
    recipe = load_recipe(write_recipe(tmp_path))
    model = load_torch_model(recipe)
    out = tmp_path / "model.onnx"
    export_onnx(model, recipe, out)
    cases = check_parity(model, out, recipe, extra=tiny_feeds(4, 8, 16))
    assert [c["case"] for c in cases] == ["min", "max", "calibration batch"]
    assert all(c["max_abs"] <= c["tolerance"] for c in cases)


def test_unexportable_model_names_both_failures_and_a_log(tmp_path: Path) -> None:
    recipe = load_recipe(write_recipe(tmp_path, {"model.factory": "tests.models:unexportable"}))
    with pytest.raises(TargetBuildError, match=r"ONNX export failed") as err:
        export_onnx(load_torch_model(recipe), recipe, tmp_path / "model.onnx")
    text = err.value.message
    assert "torchscript: UnsupportedOperatorError" in text and "linalg_eigvals" in text
    assert "dynamo:" in text and "\x1b[" not in text
    logs = [
        Path(part.split("(log: ")[1].rstrip(")")) for part in text.splitlines() if "(log: " in part
    ]
    assert len(logs) == 2 and all(p.is_file() for p in logs)
    assert not (tmp_path / "model.onnx").exists()


def test_fallback_is_recorded(tmp_path: Path) -> None:
    recipe = load_recipe(
        write_recipe(
            tmp_path,
            {
                "model.factory": "tests.models:data_dependent_branch",
                "export.exporter": "dynamo",
            },
        )
    )
    result = export_onnx(load_torch_model(recipe), recipe, tmp_path / "model.onnx")
    assert result.exporter == "torchscript"
    assert result.fallback_reason is not None and result.fallback_reason.startswith("dynamo:")
    assert "(log: " in result.fallback_reason


def test_no_fallback_when_disabled(tmp_path: Path) -> None:
    recipe = load_recipe(
        write_recipe(
            tmp_path,
            {
                "model.factory": "tests.models:data_dependent_branch",
                "export.exporter": "dynamo",
                "export.fallback": False,
            },
        )
    )
    with pytest.raises(TargetBuildError, match=r"ONNX export failed:\n  dynamo: "):
        export_onnx(load_torch_model(recipe), recipe, tmp_path / "model.onnx")


def test_recipe_input_order_need_not_follow_forward(tmp_path: Path) -> None:
    from tests.conftest import TINY

    reordered = {n: TINY["inputs"][n] for n in ("audio", "attention_mask", "input_ids", "image")}
    recipe = load_recipe(write_recipe(tmp_path, {"inputs": reordered}))
    model = load_torch_model(recipe)
    out = tmp_path / "model.onnx"
    export_onnx(model, recipe, out)
    check_parity(model, out, recipe)  # names bound to the right tensors, or this would fail
    proto = onnx.load(str(out))
    ids = next(i for i in proto.graph.input if i.name == "input_ids")
    assert ids.type.tensor_type.elem_type == onnx.TensorProto.INT64


def test_a_program_with_static_shapes_is_refused_clearly(tmp_path: Path) -> None:
    import torch

    from tests.models import tiny_fusion

    feeds = {k: torch.from_numpy(v) for k, v in tiny_feeds(2, 8, 16).items()}
    torch.export.save(
        torch.export.export(tiny_fusion().eval(), tuple(feeds.values())),
        str(tmp_path / "model.pt2"),
    )
    recipe = load_recipe(write_recipe(tmp_path, {"model.factory": None, "model.path": "model.pt2"}))
    with pytest.raises(
        TargetBuildError,
        match=r"fixes input 'image' dim 0 to 2, but the recipe "
        r"declares it as dynamic axis 'batch' \[1, 16\]",
    ):
        export_onnx(load_torch_model(recipe), recipe, tmp_path / "model.onnx")
