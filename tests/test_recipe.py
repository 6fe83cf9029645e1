from __future__ import annotations

from pathlib import Path

import pytest

from mmedge.errors import RecipeError
from mmedge.recipe import load_recipe
from tests.conftest import REPO, write_recipe

RECIPES = sorted((REPO / "recipes").glob("*.yaml"))


def test_recipes_are_shipped() -> None:
    names = {p.name for p in RECIPES}
    assert {"reference.yaml", "reference-large.yaml"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_validates(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.inputs and recipe.outputs
    assert set(recipe.branches) >= {"image", "text", "audio", "fusion"}
    if recipe.calibration is not None and recipe.calibration.path is not None:
        data = recipe.calibration.path
        if data.is_relative_to(REPO / "runs"):  # made by a generator (recipes/PRETRAINED.md)
            assert data == (REPO / "runs" / "realmodel" / "calib").resolve()
        else:
            assert data.is_dir(), "relative paths resolve next to the recipe"
    if recipe.model.weights is not None:
        assert recipe.model.weights.is_file()


def test_tiny_recipe_resolves_paths_relative_to_the_file(tiny_recipe: Path) -> None:
    recipe = load_recipe(tiny_recipe)
    assert recipe.calibration is not None
    assert recipe.calibration.path == tiny_recipe.parent / "calib"
    assert recipe.batch_axis == "batch"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"quantisation": {"mode": "static"}}, r"quantisation: Extra inputs are not permitted"),
        ({"quantization.methd": "minmax"}, r"quantization\.methd: Extra inputs"),
        ({"quantization.method": "kl"}, r"quantization\.method: Input should be 'minmax'"),
        ({"bench.iterations": 0}, r"bench\.iterations: Input should be greater than or equal to 1"),
        ({"bench.batch": "eight"}, r"bench\.batch: Input should be a valid integer"),
        ({"axes.seq.min": 20}, r"need min <= opt <= max, got 20, 8, 16"),
        ({"inputs.image.shape": ["batch", 1, 0, 8]}, r"static dimension must be >= 1"),
        ({"inputs.audio.shape": ["batch", 4, "time"]}, r"axis 'time', which is not declared"),
        (
            {"inputs.image.shape": [1, 1, 8, 8]},
            r"first dimension must be the same named batch axis",
        ),
        ({"inputs.image.dtype": "float64"}, r"inputs\.image\.dtype: Input should be 'float32'"),
        (
            {"model.factory": "tests.models.tiny_fusion"},
            r"factory must look like 'package\.module:function'",
        ),
        ({"model.weights": "w.bin"}, r"weights must be \.safetensors, \.pt or \.pth"),
        ({"branches.head": ["image_encoder"]}, r"'image_encoder' is in both 'image' and 'head'"),
        (
            {"quantization.keep_fp32": ["vision"]},
            r"keep_fp32 names \['vision'\], which are not declared branches",
        ),
        ({"quantization.op_types": ["Conv", "Convolution"]}, r"quantization\.op_types\.1"),
        ({"calibration.synthetic": {"samples": 4}}, r"give exactly one of 'path'"),
        ({"eval.output": "probs"}, r"eval\.output 'probs' is not one of outputs"),
        ({"compare.min_cosine": 1.5}, r"compare\.min_cosine"),
        ({"eval.batch": 32}, r"eval\.batch is 32, above the batch axis 'batch' max of 16"),
    ],
)
def test_bad_fields_name_their_path(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    with pytest.raises(RecipeError, match=message):
        load_recipe(write_recipe(tmp_path, change))


def test_malformed_yaml(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ninputs: [unclosed\n")
    with pytest.raises(RecipeError, match="is not valid YAML"):
        load_recipe(path)


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(RecipeError, match="expected a mapping at the top level, got list"):
        load_recipe(path)


def test_missing_recipe_file(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_overrides_go_through_validation(tiny_recipe: Path) -> None:
    recipe = load_recipe(tiny_recipe, {"quantization.method": "entropy", "bench.batch": 4})
    assert recipe.quantization.method == "entropy"
    assert recipe.bench.batch == 4
    with pytest.raises(RecipeError, match=r"quantization\.method"):
        load_recipe(tiny_recipe, {"quantization.method": "best"})


def test_synthetic_calibration_replaces_a_path(tiny_recipe: Path) -> None:
    recipe = load_recipe(
        tiny_recipe, {"calibration.path": None, "calibration.synthetic": {"samples": 4}}
    )
    assert recipe.calibration is not None and recipe.calibration.synthetic is not None


def test_artifact_hash_ignores_bench_and_gate_settings(tiny_recipe: Path) -> None:
    base = load_recipe(tiny_recipe).artifact_sha256()
    assert load_recipe(tiny_recipe, {"bench.iterations": 7}).artifact_sha256() == base
    assert load_recipe(tiny_recipe, {"compare.min_cosine": 0.5}).artifact_sha256() == base
    assert load_recipe(tiny_recipe, {"quantization.method": "entropy"}).artifact_sha256() != base
