from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mmedge.data.datasets import ShardDataset, SyntheticDataset, open_calibration, open_eval
from mmedge.errors import InputSpecError
from mmedge.recipe import Recipe, load_recipe
from tests.conftest import tiny_feeds, write_shards


@pytest.fixture
def recipe(tiny_recipe: Path) -> Recipe:
    return load_recipe(tiny_recipe)


def test_batches_stream_shard_by_shard(recipe: Recipe, tmp_path: Path) -> None:
    write_shards(tmp_path / "s", [(10, 8, 16), (7, 12, 24)])
    data = ShardDataset(tmp_path / "s", recipe)
    assert data.samples == 17
    sizes = [(b.feeds["input_ids"].shape, b.feeds["audio"].shape[2]) for b in data.batches(4)]
    # A batch never spans two shards: their sequence lengths differ.
    assert sizes == [((4, 8), 16), ((4, 8), 16), ((2, 8), 16), ((4, 12), 24), ((3, 12), 24)]


def test_limit_caps_samples_in_file_order(recipe: Recipe, tmp_path: Path) -> None:
    write_shards(tmp_path / "s", [(10, 8, 16), (7, 12, 24)])
    data = ShardDataset(tmp_path / "s", recipe, limit=12)
    assert data.samples == 12
    assert sum(b.feeds["image"].shape[0] for b in data.batches(5)) == 12
    assert data.limited(3).samples == 3
    assert data.limited(100).samples == 12


def test_labels_are_read_and_checked(recipe: Recipe) -> None:
    data = open_eval(recipe)
    assert data is not None
    labels = np.concatenate([b.labels for b in data.batches(16) if b.labels is not None])
    assert labels.shape == (24,) and labels.dtype.kind == "i"


def test_missing_label_array(recipe: Recipe, tmp_path: Path) -> None:
    write_shards(tmp_path / "s", [(4, 8, 16)])
    with pytest.raises(InputSpecError, match=r"label array 'label' missing; shard has: image"):
        ShardDataset(tmp_path / "s", recipe, label_key="label")


def test_float_labels_are_refused(recipe: Recipe, tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    np.savez(tmp_path / "s" / "a.npz", **tiny_feeds(4, 8, 16), label=np.zeros(4, np.float32))  # type: ignore[arg-type]
    with pytest.raises(InputSpecError, match="labels have dtype float32, expected an integer"):
        ShardDataset(tmp_path / "s", recipe, label_key="label")


def test_a_bad_shard_fails_before_any_long_step(recipe: Recipe, tmp_path: Path) -> None:
    write_shards(tmp_path / "s", [(4, 8, 16), (4, 8, 16), (4, 8, 16), (4, 8, 16)])
    feeds = tiny_feeds(4, 8, 16)
    del feeds["audio"]
    np.savez(tmp_path / "s" / "shard-003.npz", **feeds)  # type: ignore[arg-type]
    with pytest.raises(
        InputSpecError, match=r"s/shard-003\.npz: inputs do not match.*missing \['audio'\]"
    ):
        ShardDataset(tmp_path / "s", recipe)


def test_corrupt_shard(recipe: Recipe, tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "shard-000.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(InputSpecError, match="cannot read shard"):
        ShardDataset(tmp_path / "s", recipe)


def test_pickled_objects_are_refused(recipe: Recipe, tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    feeds = dict(tiny_feeds(4, 8, 16))
    np.savez(tmp_path / "s" / "shard-000.npz", **feeds, meta=np.array([{"a": 1}], dtype=object))  # type: ignore[arg-type]
    with pytest.raises(InputSpecError, match="cannot read shard"):
        ShardDataset(tmp_path / "s", recipe)


@pytest.mark.parametrize("layout", ["missing", "empty", "not-npz"])
def test_empty_or_missing_sources(recipe: Recipe, tmp_path: Path, layout: str) -> None:
    path = tmp_path / "data"
    if layout == "empty":
        path.mkdir()
    elif layout == "not-npz":
        path = tmp_path / "data.csv"
        path.write_text("a,b\n")
    message = {
        "missing": "data path not found",
        "empty": "no .npz shards found",
        "not-npz": "expected a directory of .npz shards",
    }[layout]
    with pytest.raises(InputSpecError, match=message):
        ShardDataset(path, recipe)


def test_zero_sample_shard(recipe: Recipe, tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    np.savez(tmp_path / "s" / "a.npz", **tiny_feeds(0, 8, 16))  # type: ignore[arg-type]
    with pytest.raises(InputSpecError, match="zero samples"):
        ShardDataset(tmp_path / "s", recipe)


def test_synthetic_source_covers_min_opt_max(recipe: Recipe) -> None:
    data = SyntheticDataset(recipe, samples=10, seed=3)
    seqs = [b.feeds["input_ids"].shape for b in data.batches(4)]
    assert seqs == [(4, 8), (4, 4), (2, 16)]  # opt, min, max; the last batch is short
    again = [b.feeds["image"] for b in SyntheticDataset(recipe, 10, 3).batches(4)]
    assert np.array_equal(again[0], next(data.batches(4)).feeds["image"])
    assert "synthetic" in data.describe()


def test_no_calibration_section(tiny_recipe: Path) -> None:
    recipe = load_recipe(tiny_recipe, {"calibration": None})
    with pytest.raises(InputSpecError, match="this step needs calibration data"):
        open_calibration(recipe)
