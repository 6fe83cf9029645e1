"""Recover a pruned model's accuracy: distillation from the unpruned model, or fine-tuning.

Distillation needs no labels: the student matches the teacher's softened logits (KL, times T²
so gradients keep their scale) on the calibration set or any recipe data, plus, optionally, a
per-branch MSE between branch embeddings where pruning kept their width. Fine-tuning adds
cross-entropy on labels. The student trains with normalization and dropout layers in eval mode:
with a few hundred samples, batch statistics would only add noise to what pruning left.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from mmedge.branches import UNASSIGNED, branch_of
from mmedge.data.datasets import DataSource
from mmedge.errors import DeviceUnavailable, InputSpecError, TargetBuildError
from mmedge.model import ordered_args
from mmedge.progress import TrainStep
from mmedge.recipe import Recipe, RecoverConfig

if TYPE_CHECKING:
    import torch
    from torch import nn


def _float_tensors(out: Any) -> list[Any]:
    """The floating-point tensors in a module's output: a tensor, a tuple, or a mapping (a
    transformers ModelOutput holds last_hidden_state, pooler_output...)."""
    import torch

    if isinstance(out, torch.Tensor):
        return [out] if out.is_floating_point() else []
    values = (
        out.values() if isinstance(out, Mapping) else out if isinstance(out, tuple | list) else []
    )
    return [t for v in values for t in _float_tensors(v)]


def branch_outputs(model: nn.Module, recipe: Recipe) -> tuple[dict[str, Any], list[Any]]:
    """Forward hooks keeping each branch's output tensors (module at its first prefix)."""
    modules = dict(model.named_modules())
    captured: dict[str, Any] = {}
    hooks = [
        modules[prefixes[0]].register_forward_hook(
            lambda _m, _i, out, b=branch: captured.__setitem__(b, _float_tensors(out))
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
    progress: TrainStep | None = None,
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
    frozen = untouched_branches(student, teacher, recipe) if cfg.freeze_untouched else []
    trained = [
        p
        for name, p in student.named_parameters()
        if p.requires_grad and _branch(name, recipe) not in frozen
    ]
    if not trained:
        raise InputSpecError(
            "recovery has nothing to train: pruning changed no branch (every branch is frozen)",
            hint="prune something (prune.ratio / prune.branches), or set prune.recover.mode: none",
        )
    before = copy.deepcopy(student.state_dict())
    held = held_out(data)
    held_before = _held_out_kl(student, teacher, held, cfg.temperature)
    device = _device(cfg.device)
    student.to(device)  # the held-out checks stay on the CPU: the same figures either way
    teacher.to(device)
    optimizer = torch.optim.AdamW(trained, lr=cfg.lr)
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
                feeds = {k: v.to(device) for k, v in _tensors(batch.feeds).items()}
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
                    for branch, s_outs in s_feats.items():
                        t_outs = t_feats.get(branch, [])
                        shapes = [s.shape for s in s_outs]
                        if s_outs and shapes == [t.shape for t in t_outs]:
                            pairs = zip(s_outs, t_outs, strict=True)
                            mse = sum(F.mse_loss(s, t) for s, t in pairs) / len(s_outs)
                            loss = loss + cfg.feature_weight * mse
                            matched.add(branch)
                if cfg.mode == "finetune":
                    assert batch.labels is not None
                    labels = torch.from_numpy(batch.labels).long().to(device)
                    loss = loss + F.cross_entropy(s_logits, labels)
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
        student.to("cpu")
        teacher.to("cpu")
    final = float(np.mean(losses[-steps:])) if losses else None
    held_after = _held_out_kl(student, teacher, held, cfg.temperature)
    # Fine-tuning trades agreement with the teacher for labels: only distillation must agree more.
    rejected = _rejection(student, teacher, held, held_before, held_after, cfg.mode == "distill")
    if rejected is not None:
        # A recovery that made things worse is undone, and the report says why: the figures
        # that follow are the pruned model's own, never those of a destroyed one.
        student.load_state_dict(before)
        if _collapsed(student, teacher, held):
            raise TargetBuildError(
                "the pruned model's outputs no longer depend on its inputs (one class for every "
                "sample), and recovery did not fix it",
                hint="prune less (prune.ratio / prune.branches) or protect the layers at fault",
            )
    return {
        "mode": cfg.mode,
        "epochs": cfg.epochs,
        "steps": len(losses),
        "samples": data.samples,
        "data": data.describe(),
        "first_loss": losses[0] if losses else None,
        "final_loss": final,
        # KL to the teacher on the first 256 samples, before and after (the "loss fell" check)
        "kl_before": held_before,
        "kl_after": held_after,
        "feature_loss_branches": sorted(matched),
        "frozen_branches": frozen,
        "applied": rejected is None,
        "rejected": rejected,
        "seconds": round(time.perf_counter() - start, 1),
    }


def _device(name: str) -> Any:
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable(
            "prune.recover.device is 'cuda', but PyTorch sees no CUDA device here",
            hint="train on the CPU (prune.recover.device: cpu), or run where a GPU and a CUDA "
            "build of torch are",
        )
    return torch.device(name)


def _branch(parameter: str, recipe: Recipe) -> str:
    return branch_of(parameter.rpartition(".")[0], recipe.branches)


def untouched_branches(student: nn.Module, teacher: nn.Module, recipe: Recipe) -> list[str]:
    """Branches whose every parameter pruning left as it was (same name, shape and values)."""
    import torch

    original = dict(teacher.named_parameters())
    touched: set[str] = set()
    seen: set[str] = set()
    for name, p in student.named_parameters():
        branch = _branch(name, recipe)
        seen.add(branch)
        old = original.get(name.replace("_orig", ""))  # (sparsity masks rename weight_orig)
        if old is None or old.shape != p.shape or not torch.equal(old.detach(), p.detach()):
            touched.add(branch)
    return sorted(b for b in seen - touched if b != UNASSIGNED)


def held_out(data: DataSource, limit: int = 256) -> list[dict[str, np.ndarray]]:
    """The first ``limit`` samples, kept: a data factory may stream fresh samples on every
    pass, and before/after or student/teacher must see the same ones."""
    kept: list[dict[str, np.ndarray]] = []
    count = 0
    for batch in data.batches(32):
        kept.append({k: np.asarray(v) for k, v in batch.feeds.items()})
        count += len(next(iter(batch.feeds.values())))
        if count >= limit:
            break
    return kept


def _logits(model: nn.Module, held: list[dict[str, np.ndarray]]) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = [model(*ordered_args(model, _tensors(f))).detach().float().numpy() for f in held]
    return np.concatenate(out)


def _collapsed(student: nn.Module, teacher: nn.Module, held: list[dict[str, np.ndarray]]) -> bool:
    """Outputs that barely move with the inputs (their spread across samples under 1% of the
    teacher's), or one class for every sample where the teacher tells several apart and the
    spread fell under a quarter of the teacher's (a random or barely trained model can give one
    class with lively outputs: not a collapse)."""
    s, t = _logits(student, held), _logits(teacher, held)
    spread = float(s.std(axis=0).mean()) / max(float(t.std(axis=0).mean()), 1e-12)
    one_class = len(np.unique(s.argmax(-1))) == 1 < len(np.unique(t.argmax(-1)))
    return spread < 0.01 or (one_class and spread < 0.25)


def _held_out_kl(
    student: nn.Module, teacher: nn.Module, held: list[dict[str, np.ndarray]], temp: float
) -> float:
    """The distillation loss, measured the same way before and after (no dropout, no update)."""
    s, t = _logits(student, held) / temp, _logits(teacher, held) / temp
    log_s = s - np.logaddexp.reduce(s, axis=-1, keepdims=True)
    log_t = t - np.logaddexp.reduce(t, axis=-1, keepdims=True)
    return float(np.mean(np.sum(np.exp(log_t) * (log_t - log_s), axis=-1)) * temp**2)


def _rejection(
    student: nn.Module,
    teacher: nn.Module,
    held: list[dict[str, np.ndarray]],
    before: float,
    after: float,
    must_agree_more: bool,
) -> str | None:
    if must_agree_more and not after < before:
        return f"the distillation loss did not fall ({before:.4g} before, {after:.4g} after)"
    if _collapsed(student, teacher, held):
        return "the recovered model collapsed: its outputs no longer depend on its inputs"
    return None
