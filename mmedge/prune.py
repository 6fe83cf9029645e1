"""Structured pruning per branch on Torch-Pruning's dependency graph, and sparsity masks.

mmedge's part is the multimodal policy: a ratio per branch (module prefixes from the recipe),
whole attention heads, the fusion concat kept consistent (Torch-Pruning couples each branch's
output width with the fusion head's input), the layers that produce model outputs protected,
and checks Torch-Pruning does not make: a ratio that would empty a layer is an error (it would
silently skip it), a parameter used outside its module's forward is named before pruning (it
would be left unpruned and break the model), and a forward pass after pruning names the
module that fails.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mmedge.branches import branch_of
from mmedge.errors import RecipeError, TargetBuildError, require
from mmedge.recipe import PruneConfig, Recipe, SparsityConfig

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass
class PruneResult:
    ratios: dict[str, float]  # per branch, as applied
    heads: dict[str, list[int]]  # attention module -> [heads before, heads after]
    protected: list[str]
    skipped: list[str] = field(default_factory=list)  # layers a ratio could not touch


def branch_ratios(recipe: Recipe, cfg: PruneConfig) -> dict[str, float]:
    return {b: cfg.branches.get(b, cfg.ratio) for b in recipe.branches}


def module_branch(name: str, recipe: Recipe) -> str:
    return branch_of(name, recipe.branches)


def output_modules(model: nn.Module, feeds: Mapping[str, torch.Tensor]) -> list[str]:
    """Leaf modules whose output is returned by the model (a classifier): their width is the
    model's contract with its users, never pruned."""
    import torch

    produced: dict[int, str] = {}
    hooks = [
        m.register_forward_hook(lambda _m, _i, out, name=name: produced.__setitem__(id(out), name))
        for name, m in model.named_modules()
        if not list(m.children())
    ]
    try:
        with torch.no_grad():
            out = model(**feeds)
    finally:
        for h in hooks:
            h.remove()
    return [produced[id(o)] for o in _as_list(out) if id(o) in produced]


def _as_list(out: Any) -> list[Any]:
    """A model's outputs as a list, whether it returns a tensor, a tuple/list or a mapping."""
    if isinstance(out, Mapping):
        return list(out.values())
    return list(out) if isinstance(out, tuple | list) else [out]


def direct_parameter_uses(model: nn.Module, feeds: Mapping[str, torch.Tensor]) -> list[str]:
    """Parameters of layers whose forward never ran but that still reached the output (e.g.
    ``self.positions.weight[:n]``): Torch-Pruning follows module calls, so it would prune the
    tensors they meet and leave them whole."""
    from torch import nn

    called: set[str] = set()
    hooks = [
        m.register_forward_pre_hook(lambda _m, _i, name=name: called.add(name))
        for name, m in model.named_modules()
    ]
    model.zero_grad(set_to_none=True)
    try:
        sum(t.float().sum() for t in _as_list(model(**feeds))).backward()
    finally:
        for h in hooks:
            h.remove()
    inside_mha = {
        f"{n}.{c}"
        for n, m in model.named_modules()
        if isinstance(m, nn.MultiheadAttention)
        for c, _ in m.named_children()
    }  # its out_proj is used by its own forward
    found = []
    for name, param in model.named_parameters():
        owner = name.rpartition(".")[0]
        if param.grad is not None and owner not in called and owner not in inside_mha:
            found.append(name)
    model.zero_grad(set_to_none=True)
    return found


def attention_heads(model: nn.Module) -> tuple[dict[Any, int], dict[str, Any]]:
    """num_heads for Torch-Pruning: the q/k/v projections of transformers-style attention (a
    module with q_proj, k_proj, v_proj and num_heads), pruned a whole head at a time.

    nn.MultiheadAttention is not listed: Torch-Pruning's head-count pruning expects separate
    q/k/v Linear layers and fails on its packed in_proj_weight (1.6); as a root module type it
    is pruned in width instead (embed_dim, with head_dim, keeping the head count)."""
    num_heads: dict[Any, int] = {}
    owners: dict[str, Any] = {}
    for name, module in model.named_modules():
        if all(hasattr(module, a) for a in ("q_proj", "k_proj", "v_proj", "num_heads")):
            for proj in (module.q_proj, module.k_proj, module.v_proj):
                num_heads[proj] = int(module.num_heads)
            owners[name] = module
    return num_heads, owners


def _plan_check(
    model: nn.Module, recipe: Recipe, ratios: dict[str, float], cfg: PruneConfig, ignored: set[str]
) -> list[str]:
    """Refuse a ratio that would empty a layer; list layers it cannot touch (round_to)."""
    from torch import nn

    skipped = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Conv1d | nn.Conv2d | nn.Linear) or name in ignored:
            continue
        ratio = ratios.get(module_branch(name, recipe), 0.0)
        if ratio == 0:
            continue
        n = (
            module.out_channels
            if isinstance(module, nn.Conv1d | nn.Conv2d)
            else module.out_features
        )
        keep = int(n * (1 - ratio))
        keep -= keep % cfg.round_to
        if keep <= 0:
            raise RecipeError(
                f"prune ratio {ratio} for branch '{module_branch(name, recipe)}' would remove every "
                f"output channel of {name} ({n} channels; {int(n * (1 - ratio))} kept, rounded "
                f"down to a multiple of round_to={cfg.round_to} is 0)",
                hint="lower the ratio or round_to, or add the layer to prune.protect",
            )
        if keep == n:
            skipped.append(name)
    return skipped


def structured_prune(
    model: nn.Module,
    feeds: Mapping[str, torch.Tensor],
    recipe: Recipe,
    cfg: PruneConfig,
    taylor_batches: Callable[[], Any] | None = None,
) -> PruneResult:
    """Prune ``model`` in place; ``taylor_batches`` runs forward/backward passes to collect
    gradients when ``cfg.importance`` is 'taylor'."""
    require("torch_pruning", "pruning")
    import torch_pruning as tp

    ratios = branch_ratios(recipe, cfg)
    modules = dict(model.named_modules())
    unknown = [p for p in cfg.protect if p not in modules]
    if unknown:
        raise RecipeError(f"prune.protect names modules the model does not have: {unknown}")
    protected = sorted({*cfg.protect, *output_modules(model, feeds)})
    direct = [
        p
        for p in direct_parameter_uses(model, feeds)
        if ratios.get(module_branch(p.rpartition(".")[0], recipe), 0) > 0
    ]
    if direct:
        raise TargetBuildError(
            f"Torch-Pruning cannot follow {', '.join(direct)}: the parameter is used outside its "
            "module's forward, so pruning would leave it whole and break the model",
            hint="call the module in forward (e.g. self.positions(position_ids)), or set that "
            "branch's prune ratio to 0",
        )
    skipped = _plan_check(model, recipe, ratios, cfg, set(protected))
    num_heads, owners = attention_heads(model) if cfg.prune_heads else ({}, {})
    heads_before = {n: int(m.num_heads) for n, m in owners.items()}
    by_module = {
        modules[name]: r
        for name, r in ((p, ratios[b]) for b, prefixes in recipe.branches.items() for p in prefixes)
        if name in modules
    }
    names = {m: n for n, m in modules.items()}
    head_ratios = {m: ratios.get(module_branch(names[m], recipe), 0.0) for m in num_heads}
    importance = (
        tp.importance.GroupTaylorImportance()
        if cfg.importance == "taylor"
        else tp.importance.GroupMagnitudeImportance(p=2)
    )
    from torch import nn

    # Groups are rooted at these layers' output channels. Embedding and MultiheadAttention join
    # Torch-Pruning's default Conv/Linear/LSTM: otherwise an embedding width that no Linear
    # writes into (a CLIP-style position table) or an attention width is never pruned.
    # An embedding's output is its width; its vocabulary is never pruned.
    roots = [nn.Conv1d, nn.Conv2d, nn.Linear, nn.LSTM, nn.MultiheadAttention, nn.Embedding]
    try:
        pruner = tp.pruner.MetaPruner(
            model,
            dict(feeds),
            importance=importance,
            global_pruning=cfg.global_pruning,
            pruning_ratio=0.0,
            pruning_ratio_dict=by_module,
            ignored_layers=[modules[p] for p in protected],
            round_to=cfg.round_to,
            num_heads=num_heads,
            prune_num_heads=bool(num_heads),
            prune_head_dims=False,
            head_pruning_ratio_dict=head_ratios,
            root_module_types=roots,
        )
        if cfg.importance == "taylor":
            if taylor_batches is None:
                raise RecipeError("prune.importance 'taylor' needs calibration data")
            taylor_batches()
        pruner.step()
    except (RecipeError, TargetBuildError):
        raise
    except Exception as err:  # Torch-Pruning raises many types on graphs it cannot handle
        raise TargetBuildError(
            f"Torch-Pruning failed on this model: {type(err).__name__}: {str(err)[:300]}",
            hint="protect the layers it trips on (prune.protect) or set that branch's ratio to 0",
        ) from None
    _update_heads(pruner, owners)
    check_forward(model, feeds)
    heads = {n: [heads_before[n], int(m.num_heads)] for n, m in owners.items()}
    return PruneResult(ratios, heads, protected, skipped)


def _update_heads(pruner: Any, owners: dict[str, Any]) -> None:
    for module in owners.values():
        module.num_heads = pruner.num_heads[module.q_proj]


def check_forward(model: nn.Module, feeds: Mapping[str, torch.Tensor]) -> None:
    """Run the pruned model; a failure names the innermost module that was running."""
    import torch

    stack: list[str] = []
    finished: list[str] = []  # the last module to complete: often the real culprit

    def enter(_m: Any, _i: Any, name: str) -> None:
        stack.append(name)

    def leave(_m: Any, _i: Any, _o: Any) -> None:  # returns None: a value would replace the output
        finished.append(stack.pop())

    hooks = []
    for name, module in model.named_modules():
        hooks.append(module.register_forward_pre_hook(lambda m, i, n=name: enter(m, i, n)))
        hooks.append(module.register_forward_hook(leave))
    try:
        with torch.no_grad():
            model(**feeds)
    except Exception as err:
        where = stack[-1] if stack else "(the model's own forward)"
        before = next((f for f in reversed(finished) if not where.startswith(f + ".")), None)
        after = f", right after {before}" if before else ""
        raise TargetBuildError(
            f"the pruned model fails in {where}{after}: {type(err).__name__}: {str(err)[:300]}",
            hint="Torch-Pruning cannot follow code that fixes a width (a reshape to a constant, a "
            "parameter read directly); add that module, or its neighbours, to prune.protect",
        ) from None
    finally:
        for h in hooks:
            h.remove()


def apply_sparsity(model: nn.Module, cfg: SparsityConfig) -> dict[str, Any]:
    """Masks on Linear/Conv weights through torch.nn.utils.prune: they stay zero during
    recovery; ``remove_masks`` makes them permanent. 2:4 zeros the two smallest of every four
    weights along the input dimension (what sparse tensor cores read)."""
    import torch
    from torch import nn
    from torch.nn.utils import prune

    layers = [
        (n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d)
    ]
    masked, skipped = 0, []
    for name, module in layers:
        if cfg.mode == "unstructured":
            prune.l1_unstructured(module, "weight", amount=cfg.ratio)
            masked += 1
            continue
        weight = module.weight.detach()
        flat = weight.reshape(weight.shape[0], -1)  # groups of 4 along the input dimension
        if flat.shape[1] % 4:
            skipped.append(name)
            continue
        groups = flat.abs().reshape(flat.shape[0], -1, 4)
        keep = torch.zeros_like(groups).scatter_(2, groups.topk(2, dim=2).indices, 1.0)
        prune.custom_from_mask(module, "weight", keep.reshape(weight.shape))
        masked += 1
    return {
        "mode": cfg.mode,
        "ratio": 0.5 if cfg.mode == "2:4" else cfg.ratio,
        "layers": masked,
        "skipped_not_multiple_of_4": skipped,
    }


def remove_masks(model: nn.Module) -> None:
    from torch.nn.utils import prune

    for module in model.modules():
        if prune.is_pruned(module) and hasattr(module, "weight_orig"):
            prune.remove(module, "weight")
