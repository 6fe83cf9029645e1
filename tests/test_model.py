from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from mmedge.errors import InputSpecError, ModelLoadError
from mmedge.model import load_torch_model, torch_runner
from mmedge.recipe import load_recipe
from tests.conftest import tiny_feeds, write_recipe
from tests.models import tiny_fusion


def _load(tmp_path: Path, changes: dict[str, object]) -> torch.nn.Module:
    return load_torch_model(load_recipe(write_recipe(tmp_path, changes)))


def test_factory_model_runs_on_named_feeds(tmp_path: Path) -> None:
    model = _load(tmp_path, {})
    assert not model.training
    out = torch_runner(model, ["logits"])(tiny_feeds(3, 8, 16))
    assert out["logits"].shape == (3, 5)


def test_safetensors_weights_are_loaded(tmp_path: Path) -> None:
    trained = tiny_fusion(seed=7)
    save_file(trained.state_dict(), str(tmp_path / "w.safetensors"))
    model = _load(tmp_path, {"model.weights": "w.safetensors"})
    for name, value in trained.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name


def test_weights_only_torch_checkpoint(tmp_path: Path) -> None:
    torch.save({"state_dict": tiny_fusion(seed=3).state_dict()}, tmp_path / "w.pt")
    model = _load(tmp_path, {"model.weights": "w.pt"})
    assert torch.equal(
        model.state_dict()["head.classifier.weight"],
        tiny_fusion(seed=3).state_dict()["head.classifier.weight"],
    )


class Payload:
    """Unpickling this runs code; a weights-only loader must refuse it."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("echo pwned > /dev/null",))


def test_pickled_code_in_a_checkpoint_is_refused(tmp_path: Path) -> None:
    torch.save({"state_dict": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ModelLoadError, match=r"cannot load weights .*evil\.pt") as err:
        _load(tmp_path, {"model.weights": "evil.pt"})
    assert err.value.hint is not None and "weights-only" in err.value.hint


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        (
            {"model.factory": "tests.no_such_module:f"},
            ModelLoadError,
            r"cannot import factory module 'tests.no_such_module'",
        ),
        (
            {"model.factory": "tests.models:no_such_factory"},
            ModelLoadError,
            r"module 'tests.models' has no attribute 'no_such_factory'",
        ),
        (
            {"model.factory": "tests.models:failing_factory"},
            ModelLoadError,
            r"factory tests.models:failing_factory failed: RuntimeError: CUDA driver not found",
        ),
        (
            {"model.factory": "tests.models:not_a_module"},
            ModelLoadError,
            r"returned dict, expected a torch.nn.Module",
        ),
        (
            {"model.factory": "tests.models:two_inputs"},
            InputSpecError,
            r"recipe inputs do not match TwoInputs.forward\(image, tokens\): "
            r"not parameters: \['input_ids', 'attention_mask', 'audio'\]; parameters without an input: \['tokens'\]",
        ),
        ({"model.weights": "missing.safetensors"}, ModelLoadError, r"weights file not found"),
        (
            {"model.factory": None, "model.path": "model.pt2"},
            ModelLoadError,
            r"model file not found",
        ),
    ],
)
def test_bad_models(tmp_path: Path, changes: dict[str, object], error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        _load(tmp_path, changes)


def test_weights_for_another_model(tmp_path: Path) -> None:
    save_file({"encoder.weight": torch.zeros(2, 2)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(ModelLoadError, match=r"do not match the model: missing \['image_encoder"):
        _load(tmp_path, {"model.weights": "w.safetensors"})


def test_corrupt_safetensors(tmp_path: Path) -> None:
    (tmp_path / "w.safetensors").write_bytes(b"\x00" * 32)
    with pytest.raises(ModelLoadError, match="cannot load weights"):
        _load(tmp_path, {"model.weights": "w.safetensors"})


def test_exported_program_source(tmp_path: Path) -> None:
    model = tiny_fusion().eval()  # a program keeps the mode it was exported in
    feeds = {k: torch.from_numpy(v) for k, v in tiny_feeds(2, 8, 16).items()}
    torch.export.save(torch.export.export(model, (), kwargs=feeds), str(tmp_path / "model.pt2"))
    loaded = _load(tmp_path, {"model.factory": None, "model.path": "model.pt2"})
    np_feeds = tiny_feeds(2, 8, 16)
    got = torch_runner(loaded, ["logits"])(np_feeds)["logits"]
    want = torch_runner(model, ["logits"])(np_feeds)["logits"]
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_onnx_source_is_not_a_torch_model(tmp_path: Path) -> None:
    (tmp_path / "m.onnx").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="is an ONNX model; this step needs a PyTorch model"):
        _load(tmp_path, {"model.factory": None, "model.path": "m.onnx"})


def test_a_factory_module_beside_the_recipe_is_importable(tmp_path: Path) -> None:
    """A user's model.py next to their recipe.yaml: no PYTHONPATH needed (or import_path)."""
    import sys

    from tests.conftest import write_recipe

    name = "beside_recipe_model"
    (tmp_path / f"{name}.py").write_text(
        "from tests.models import tiny_fusion\n\ndef make():\n    return tiny_fusion()\n"
    )
    recipe = load_recipe(write_recipe(tmp_path, {"model.factory": f"{name}:make"}))
    assert recipe.model.import_path == [tmp_path.resolve()]
    try:
        assert load_torch_model(recipe) is not None
    finally:
        sys.modules.pop(name, None)
        sys.path[:] = [p for p in sys.path if p != str(tmp_path.resolve())]

    (tmp_path / "lib").mkdir()
    (tmp_path / f"{name}.py").rename(tmp_path / "lib" / f"elsewhere_{name}.py")
    changes = {"model.factory": f"elsewhere_{name}:make", "model.import_path": ["lib"]}
    recipe = load_recipe(write_recipe(tmp_path, changes))
    assert recipe.model.import_path == [(tmp_path / "lib").resolve()]
    try:
        assert load_torch_model(recipe) is not None
    finally:
        sys.modules.pop(f"elsewhere_{name}", None)
        sys.path[:] = [p for p in sys.path if p != str((tmp_path / "lib").resolve())]
