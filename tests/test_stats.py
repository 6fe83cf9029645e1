"""Per-branch parameters and MACs against counts made another way."""

from __future__ import annotations

import pytest
import torch

from mmedge.stats import branch_stats, macs_by_module, params_by_branch
from tests.conftest import tiny_feeds
from tests.models import TINY, tiny_fusion

BRANCHES = {
    "image": ["image_encoder"],
    "text": ["text_encoder"],
    "audio": ["audio_encoder"],
    "fusion": ["head"],
}


def test_params_by_branch_partition_the_model() -> None:
    model = tiny_fusion()
    params = params_by_branch(model, BRANCHES)
    assert sum(params.values()) == sum(p.numel() for p in model.parameters())
    assert params["image"] == sum(p.numel() for p in model.image_encoder.parameters())
    assert params["other"] == 0


def test_conv_branch_macs_match_the_formula() -> None:
    # image 1x8x8: conv 1->4 (3x3, stride 1) at 8x8, conv 4->8 (stride 2) at 4x4, proj 8->8.
    expected = 8 * 8 * 4 * 1 * 9 + 4 * 4 * 8 * 4 * 9 + 8 * 8
    macs = branch_stats(tiny_fusion().eval(), tiny_feeds(1, 8, 16), BRANCHES)
    assert macs["image"].macs == expected


def test_text_branch_macs_include_attention() -> None:
    seq, dim, ff = 8, TINY.text_dim, TINY.text_ff
    linear = seq * (4 * dim * dim + 2 * dim * ff)  # q, k, v, out + feed-forward
    attention = 2 * seq * seq * dim  # scores and context
    expected = linear + attention + dim * TINY.embed_dim  # + pooled projection
    stats = branch_stats(tiny_fusion().eval(), tiny_feeds(1, seq, 16), BRANCHES)
    assert stats["text"].macs == expected


def test_exclusive_counts_sum_to_the_total() -> None:
    model = tiny_fusion().eval()
    feeds = tiny_feeds(2, 8, 16)
    per_module = macs_by_module(model, feeds)
    stats = branch_stats(model, feeds, BRANCHES)
    assert sum(per_module.values()) == stats["total"].macs
    assert all(v >= 0 for v in per_module.values())
    assert per_module["text_encoder.layers.0.attn"] > 0  # its own bmm, outside its Linears


def test_reference_conv_branches_against_torch_pruning_counter() -> None:
    tp = pytest.importorskip("torch_pruning")
    from mmedge.reference.model import reference_model

    model = reference_model().eval()
    image, audio = torch.randn(1, 1, 32, 32), torch.randn(1, 32, 64)
    feeds = {
        "image": image.numpy(),
        "input_ids": torch.zeros(1, 8, dtype=torch.long).numpy(),
        "attention_mask": torch.ones(1, 8, dtype=torch.long).numpy(),
        "audio": audio.numpy(),
    }
    stats = branch_stats(model, feeds, BRANCHES)
    for branch, module, arg in (
        ("image", model.image_encoder, image),
        ("audio", model.audio_encoder, audio),
    ):
        theirs, _ = tp.utils.count_ops_and_params(module, example_inputs=arg)
        # Torch-Pruning adds BatchNorm (2/element) and ReLU (1/element), ~3% on these branches.
        assert stats[branch].macs == pytest.approx(theirs, rel=0.05), branch
        assert stats[branch].macs < theirs
