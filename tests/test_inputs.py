from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mmedge.errors import InputSpecError
from mmedge.inputs import concrete_shape, dummy_feeds, validate_feeds
from mmedge.recipe import Recipe, load_recipe
from tests.conftest import tiny_feeds


@pytest.fixture
def recipe(tiny_recipe: Path) -> Recipe:
    return load_recipe(tiny_recipe)


def test_concrete_shapes_follow_min_opt_max(recipe: Recipe) -> None:
    audio = recipe.inputs["audio"]
    assert concrete_shape(audio, recipe, "min") == (1, 4, 8)
    assert concrete_shape(audio, recipe, "opt") == (2, 4, 16)
    assert concrete_shape(audio, recipe, "max", batch=3) == (3, 4, 32)


def test_dummy_feeds_have_recipe_dtypes_and_ranges(recipe: Recipe) -> None:
    feeds = dummy_feeds(recipe, "max")
    assert feeds["input_ids"].dtype == np.int64
    assert feeds["input_ids"].shape == (16, 16)
    assert feeds["input_ids"].min() >= 0 and feeds["input_ids"].max() < 16
    assert (feeds["attention_mask"] == 1).all()
    assert feeds["image"].dtype == np.float32
    validate_feeds(feeds, recipe, "dummy")


def test_valid_feeds_pass(recipe: Recipe) -> None:
    validate_feeds(tiny_feeds(3, 8, 16), recipe, "batch")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda f: f.pop("audio"),
            r"shard 3: inputs do not match the recipe: missing \['audio'\].*"
            r"shard 3 has: image, input_ids, attention_mask",
        ),
        (lambda f: f.update(extra=f["image"]), r"unexpected \['extra'\]"),
        (
            lambda f: f.update(input_ids=f["input_ids"].astype(np.float32)),
            r"input 'input_ids' has dtype float32, expected int64 \(token ids and masks must stay integer\)",
        ),
        (
            lambda f: f.update(image=f["image"][:, 0]),
            r"input 'image' has rank 3 .* expected rank 4",
        ),
        (
            lambda f: f.update(image=np.zeros((0, 1, 8, 8), np.float32)),
            r"input 'image' has zero samples",
        ),
        (
            lambda f: f.update(image=np.zeros((3, 1, 8, 9), np.float32)),
            r"input 'image' dim 3 is 9, expected 8",
        ),
        (
            lambda f: f.update(attention_mask=f["attention_mask"][:, :6]),
            r"axis 'seq' is 6 in 'attention_mask' but 8 in 'input_ids'",
        ),
        (
            lambda f: f.update(audio=np.zeros((3, 4, 64), np.float32)),
            r"input 'audio' axis 'frames' is 64, outside the recipe's range \[8, 32\]",
        ),
        (
            lambda f: f["audio"].__setitem__((0, 0, 0), np.nan),
            r"input 'audio' holds 1 NaN/Inf values",
        ),
        (
            lambda f: f["image"].__setitem__((1, 0, 0, 0), np.inf),
            r"input 'image' holds 1 NaN/Inf values",
        ),
    ],
)
def test_bad_feeds_are_named(recipe: Recipe, mutate: object, message: str) -> None:
    feeds = tiny_feeds(3, 8, 16)
    mutate(feeds)  # type: ignore[operator]
    with pytest.raises(InputSpecError, match=message):
        validate_feeds(feeds, recipe, "shard 3")
