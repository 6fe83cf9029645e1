"""Recover a pruned model's accuracy: distillation from the unpruned model, or fine-tuning.

Distillation needs no labels: the student matches the teacher's softened logits (KL, times T²
so gradients keep their scale) on the calibration set or any recipe data, plus, optionally, a
per-branch MSE between branch embeddings where pruning kept their width. Fine-tuning adds
cross-entropy on labels. The student trains with normalization and dropout layers in eval mode:
with a few hundred samples, batch statistics would only add noise to what pruning left.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from mmedge.calibration import DataSource
from mmedge.errors import InputSpecError
from mmedge.model import ordered_args
from mmedge.recipe import Recipe, RecoverConfig

if TYPE_CHECKING:
    import torch
    from torch import nn

# (epoch, epochs, step, steps, loss) after every optimizer step.
Progress = Callable[[int, int, int, int, float], None]


def branch_outputs(model: nn.Module, recipe: Recipe) -> tuple[dict[str, Any], list[Any]]:
    """Forward hooks keeping each branch's output (module at its first prefix)."""
    modules = dict(model.named_modules())
    captured: dict[str, Any] = {}
    hooks = [
        modules[prefixes[0]].register_forward_hook(
            lambda _m, _i, out, b=branch: captured.__setitem__(b, out)
        )
        for branch, prefixes in recipe.branches.items()
        if prefixes[0] in modules
    ]
    return captured, hooks


def _tensors(feeds: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    import torch

    return {k: torch.from_numpy(np.asarray(v)) for k, v in feeds.items()}


def recover(
    student: nn.Module,
    teacher: nn.Module,
    data: DataSource,
    recipe: Recipe,
    cfg: RecoverConfig,
    progress: Progress | None = None,
) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    if cfg.mode == "finetune" and data.label_key is None:
        raise InputSpecError(
            "prune.recover.mode 'finetune' needs labelled data: set prune.recover.data to shards "
            f"with a '{cfg.label_key}' array, or use mode 'distill' (no labels needed)"
        )
    teacher.eval()
    student.eval()  # see the module docstring: norm statistics stay as they are
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=cfg.lr)
    steps = -(-data.samples // cfg.batch)
    # Cosine decay: large steps while pruning damage is large, small ones to settle.
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs * steps)
    s_feats, s_hooks = branch_outputs(student, recipe)
    t_feats, t_hooks = branch_outputs(teacher, recipe)
    temp = cfg.temperature
    losses: list[float] = []
    # Branches whose embedding kept its width: only those can take the feature loss, and the
    # report says which did (a pruned branch output makes the option a no-op for that branch).
    matched: set[str] = set()
    start = time.perf_counter()
    try:
        for epoch in range(cfg.epochs):
            for step, batch in enumerate(data.batches(cfg.batch)):
                feeds = _tensors(batch.feeds)
                with torch.no_grad():
                    t_logits = teacher(*ordered_args(teacher, feeds))
                s_logits = student(*ordered_args(student, feeds))
                loss = (
                    F.kl_div(
                        F.log_softmax(s_logits / temp, dim=-1),
                        F.softmax(t_logits / temp, dim=-1),
                        reduction="batchmean",
                    )
                    * temp**2
                )
                if cfg.feature_weight > 0:
                    for branch, s_out in s_feats.items():
                        t_out = t_feats.get(branch)
                        if t_out is not None and t_out.shape == s_out.shape:
                            loss = loss + cfg.feature_weight * F.mse_loss(s_out, t_out)
                            matched.add(branch)
                if cfg.mode == "finetune":
                    assert batch.labels is not None
                    loss = loss + F.cross_entropy(s_logits, torch.from_numpy(batch.labels).long())
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                losses.append(loss.item())
                if progress is not None:
                    progress(epoch + 1, cfg.epochs, step + 1, steps, losses[-1])
    finally:
        for h in [*s_hooks, *t_hooks]:
            h.remove()
    return {
        "mode": cfg.mode,
        "epochs": cfg.epochs,
        "steps": len(losses),
        "samples": data.samples,
        "data": data.describe(),
        "first_loss": losses[0] if losses else None,
        "final_loss": float(np.mean(losses[-steps:])) if losses else None,
        "feature_loss_branches": sorted(matched),
        "seconds": round(time.perf_counter() - start, 1),
    }
