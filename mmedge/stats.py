"""Parameters and MACs of a PyTorch model, per branch.

MACs come from PyTorch's own ``FlopCounterMode`` (matmul, conv, attention bmm; FLOPs / 2), which
reports inclusive counts per module path. Each module's *exclusive* count (its inclusive count
minus that of its nearest counted descendants) is attributed to the branch its path falls in,
with the same prefix rule the ONNX side uses (``mmedge.branches.branch_of``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from mmedge.branches import UNASSIGNED, branch_of, scope_of
from mmedge.model import ordered_args

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class BranchStats:
    params: int
    macs: int | None  # None when only the ONNX graph is known


def params_by_branch(model: nn.Module, branches: dict[str, list[str]]) -> dict[str, int]:
    found = dict.fromkeys([*branches, UNASSIGNED], 0)
    for name, param in model.named_parameters():
        found[branch_of(name.rpartition(".")[0], branches)] += param.numel()
    return found


def macs_by_module(model: nn.Module, feeds: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Exclusive MACs per module path ('' for the root) for one forward pass on ``feeds``."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    tensors = {k: torch.from_numpy(np.asarray(v)) for k, v in feeds.items()}
    # no_grad, not inference_mode: FlopCounterMode cannot hook weight-norm parametrizations
    # (wav2vec2, HuBERT) under inference mode.
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(*ordered_args(model, tensors))
    inclusive: dict[str, int] = {}
    for key, ops in counter.get_flop_counts().items():
        if key == "Global":
            continue
        path = key.partition(".")[2]  # drop the root class name
        inclusive[path] = sum(int(v) for v in ops.values()) // 2
    exclusive = dict(inclusive)
    for path, count in inclusive.items():
        parent = _nearest_ancestor(path, inclusive)
        if parent is not None:
            exclusive[parent] -= count
    return exclusive


def _nearest_ancestor(path: str, known: Mapping[str, int]) -> str | None:
    if not path:
        return None
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        candidate = ".".join(parts[:cut])
        if candidate in known:
            return candidate
    return ""  # the root


def branch_stats(
    model: nn.Module, feeds: Mapping[str, np.ndarray], branches: dict[str, list[str]]
) -> dict[str, BranchStats]:
    """Params and MACs per branch (plus 'other' for what no prefix covers, and 'total')."""
    params = params_by_branch(model, branches)
    macs = dict.fromkeys(params, 0)
    for path, count in macs_by_module(model, feeds).items():
        macs[branch_of(path, branches)] += count
    stats = {b: BranchStats(params[b], macs[b]) for b in params}
    stats["total"] = BranchStats(sum(params.values()), sum(macs.values()))
    return stats


def onnx_params_by_branch(
    model: onnx.ModelProto, branches: dict[str, list[str]]
) -> dict[str, BranchStats]:
    """Parameters per branch of an ONNX model: each initializer goes to its first consumer's
    branch (MACs need the PyTorch model; they are reported as None)."""
    sizes = {t.name: int(np.prod(t.dims)) for t in model.graph.initializer}
    owner: dict[str, str] = {}
    for node in model.graph.node:
        for name in node.input:
            if name in sizes and name not in owner:
                owner[name] = branch_of(scope_of(node), branches)
    params = dict.fromkeys([*branches, UNASSIGNED], 0)
    for name, size in sizes.items():
        params[owner.get(name, UNASSIGNED)] += size
    stats = {b: BranchStats(n, None) for b, n in params.items()}
    stats["total"] = BranchStats(sum(params.values()), None)
    return stats


def stats_json(stats: Mapping[str, BranchStats]) -> dict[str, Any]:
    return {name: asdict(s) for name, s in stats.items()}
