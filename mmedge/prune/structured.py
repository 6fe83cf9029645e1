"""Structured pruning per branch on Torch-Pruning's dependency graph, and sparsity masks.

mmedge's part is the multimodal policy: a ratio per branch (module prefixes from the recipe),
whole attention heads (ours, transformers' BERT/DistilBERT/ViT/CLIP/Whisper/Wav2Vec2 styles),
the fusion concat kept consistent (Torch-Pruning couples each branch's output width with the
fusion head's input), the layers that produce model outputs protected, and checks Torch-Pruning
does not make: a ratio that would empty a layer is an error (it would silently skip it), and
what it cannot follow safely is left whole and reported (a channel-last flatten, a GRU's
inputs, a group that would narrow a branch whose ratio is 0, a parameter used outside its
module's forward, a module the pruned model fails in) while the rest is pruned.
"""

from __future__ import annotations

import copy
import warnings
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
    model: nn.Module  # the pruned copy
    ratios: dict[str, float]  # per branch, as applied
    heads: dict[str, list[int]]  # attention module -> [heads before, heads after]
    protected: list[str]
    skipped: list[str] = field(default_factory=list)  # layers a ratio could not touch
    left_whole: dict[str, str] = field(default_factory=dict)  # layer -> why it was not pruned
    by_branch: str | None = None  # why each branch was pruned on a graph of its own, if it was


def branch_ratios(recipe: Recipe, cfg: PruneConfig) -> dict[str, float]:
    return {b: cfg.branches.get(b, cfg.ratio) for b in recipe.branches}


def module_branch(name: str, recipe: Recipe) -> str:
    return branch_of(name, recipe.branches)


def call(module: nn.Module, example: Any) -> Any:
    """Run a module on example inputs: a feeds mapping, or (args, kwargs) seen in a forward."""
    if isinstance(example, Mapping):
        return module(**example)
    return module(*example[0], **example[1])


def output_modules(model: nn.Module, feeds: Any) -> list[str]:
    """Leaf modules whose output is returned by the model (a classifier): their width is the
    model's contract with its users, never pruned. ``feeds``: what ``call`` takes."""
    import torch

    produced: dict[int, str] = {}
    hooks = [
        m.register_forward_hook(lambda _m, _i, out, name=name: produced.__setitem__(id(out), name))
        for name, m in model.named_modules()
        if not list(m.children())
    ]
    try:
        with torch.no_grad():
            out = call(model, feeds)
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


# Attention modules as the libraries write them: (q, k, v) projection names, the head-count
# attribute, and the attributes that hold heads x head width (updated after head pruning).
_QKV_NAMES = (
    ("q_proj", "k_proj", "v_proj"),
    ("query", "key", "value"),
    ("q_lin", "k_lin", "v_lin"),
)
_HEAD_COUNT = ("num_heads", "num_attention_heads", "n_heads")
_HEAD_WIDTH = ("head_dim", "attention_head_size", "dim_per_head")
_INNER_WIDTH = ("all_head_size", "embed_dim", "inner_dim")
MAX_ATTEMPTS = 8  # prune, run, leave the failing layer whole, again: each try names a new layer


@dataclass
class Attention:
    """One attention module whose heads are pruned whole."""

    module: Any
    projections: tuple[Any, Any, Any]
    count_attr: str
    heads: int
    head_width: int
    inner_attrs: list[str]  # attributes equal to heads x head width before pruning

    def update(self) -> int:
        """Set the head count (and inner widths) from the pruned projections' width."""
        heads = int(self.projections[0].out_features) // self.head_width
        setattr(self.module, self.count_attr, heads)
        for attr in self.inner_attrs:
            setattr(self.module, attr, heads * self.head_width)
        return heads


def attention_modules(model: nn.Module) -> dict[str, Attention]:
    """Attention modules with separate q/k/v Linear layers and a head count: ours (q_proj,
    num_heads), transformers' BERT (query, num_attention_heads, attention_head_size), DistilBERT
    (q_lin, n_heads), CLIP/Whisper/Wav2Vec2/ViT (q_proj, num_heads or num_attention_heads,
    head_dim).

    nn.MultiheadAttention is not listed: Torch-Pruning's head-count pruning expects separate
    q/k/v Linear layers and fails on its packed in_proj_weight (1.6); as a root module type it
    is pruned in width instead (embed_dim, with head_dim, keeping the head count)."""
    from torch import nn

    found: dict[str, Attention] = {}
    for name, module in model.named_modules():
        projections = next(
            (
                tuple(getattr(module, n) for n in names)
                for names in _QKV_NAMES
                if all(isinstance(getattr(module, n, None), nn.Linear) for n in names)
            ),
            None,
        )
        count_attr = next(
            (a for a in _HEAD_COUNT if isinstance(getattr(module, a, None), int)), None
        )
        if projections is None or count_attr is None:
            continue
        heads = int(getattr(module, count_attr))
        width = int(projections[0].out_features)
        if heads <= 0 or width % heads:
            continue
        head_width = width // heads
        inner = [a for a in _INNER_WIDTH if getattr(module, a, None) == width]
        found[name] = Attention(module, projections, count_attr, heads, head_width, inner)
    return found


@dataclass
class _Plan:
    """What one pruning attempt leaves alone, and why (module name -> reason)."""

    ratios: dict[str, float]
    protected: list[str]
    left_whole: dict[str, str] = field(default_factory=dict)
    by_branch: str | None = None  # why the model was pruned branch by branch, if it was


def _plan_check(
    model: nn.Module, recipe: Recipe, ratios: dict[str, float], cfg: PruneConfig, plan: _Plan
) -> list[str]:
    """Layers a ratio would empty (a squeeze-excitation reduce, a gate with one output per
    branch) are left whole, or refused under ``cfg.strict``; returns the layers the ratio
    cannot touch at all (round_to)."""
    from torch import nn

    skipped = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Conv1d | nn.Conv2d | nn.Linear) or name in plan.protected:
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
            why = (
                f"prune ratio {ratio} for branch '{module_branch(name, recipe)}' would remove every "
                f"output channel of {name} ({n} channels; {int(n * (1 - ratio))} kept, rounded "
                f"down to a multiple of round_to={cfg.round_to} is 0)"
            )
            if cfg.strict:
                raise RecipeError(
                    why, hint="lower the ratio or round_to, or drop --strict to leave it whole"
                )
            plan.left_whole[name] = why
            continue
        if keep == n:
            skipped.append(name)
    return skipped


def structured_prune(
    model: nn.Module,
    feeds: Mapping[str, torch.Tensor],
    recipe: Recipe,
    cfg: PruneConfig,
    taylor_batches: Callable[[nn.Module], Any] | None = None,
) -> PruneResult:
    """Prune a copy of ``model``; ``taylor_batches(model)`` runs forward/backward passes to
    collect gradients when ``cfg.importance`` is 'taylor'.

    A layer Torch-Pruning cannot follow safely is left whole and the rest is pruned: layers
    whose channels reach a flatten through a permute (a channel-last flatten), groups that would
    narrow a branch whose ratio is 0 or a model output, layers a ratio would empty, recurrent
    layers' hidden widths, and, found by running the pruned model, the layers feeding the
    module that fails (then pruning starts again from the original). A model Torch-Pruning
    cannot trace whole is pruned branch by branch. ``cfg.strict`` makes any of these an error.
    """
    require("torch_pruning", "pruning")
    modules = dict(model.named_modules())
    unknown = [p for p in cfg.protect if p not in modules]
    if unknown:
        raise RecipeError(f"prune.protect names modules the model does not have: {unknown}")
    plan = _Plan(
        dict(branch_ratios(recipe, cfg)), sorted({*cfg.protect, *output_modules(model, feeds)})
    )
    for param in direct_parameter_uses(model, feeds):
        branch = module_branch(param.rpartition(".")[0], recipe)
        if plan.ratios.get(branch, 0) > 0:
            plan.ratios[branch] = 0.0
            plan.left_whole[param] = (
                f"parameter used outside its module's forward: Torch-Pruning cannot follow it, so "
                f"branch '{branch}' is left whole (call the module in forward to prune it)"
            )
    skipped = _plan_check(model, recipe, plan.ratios, cfg, plan)
    for _ in range(MAX_ATTEMPTS):
        work = copy.deepcopy(model)
        attention = attention_modules(work) if cfg.prune_heads else {}
        try:
            if plan.by_branch:
                raise _Untraceable(plan.by_branch)
            failure = _attempt(work, feeds, recipe, cfg, plan, attention, taylor_batches)
        except _Untraceable as whole:
            # One graph for the whole model failed: each branch on its own graph instead.
            work = copy.deepcopy(model)
            attention = attention_modules(work) if cfg.prune_heads else {}
            plan.by_branch = str(whole)
            failure = _attempt_by_branch(work, feeds, recipe, cfg, plan, attention, taylor_batches)
        if failure is None:
            break
    else:
        raise TargetBuildError(
            f"pruning still fails after leaving {len(plan.left_whole)} layers whole: {failure}",
            hint="add the layers it names to prune.protect, or set that branch's ratio to 0",
        )
    if cfg.strict and plan.left_whole:
        listed = "; ".join(f"{k}: {v}" for k, v in sorted(plan.left_whole.items()))
        raise TargetBuildError(
            f"--strict: {len(plan.left_whole)} layers cannot be pruned safely ({listed})",
            hint="drop --strict to prune the rest and leave these whole",
        )
    heads = {n: [a.heads, a.update()] for n, a in attention.items()}
    return PruneResult(
        work, plan.ratios, heads, plan.protected, skipped, plan.left_whole, plan.by_branch
    )


class _Untraceable(Exception):
    """Torch-Pruning could not trace or prune a module (it raises many types on such graphs)."""


@dataclass
class _Scope:
    """The module one Torch-Pruning graph covers: the whole model, or one branch's module."""

    module: nn.Module
    prefix: str  # its name in the model ("" for the whole model)
    example: Any  # its example inputs: a feeds mapping, or (args, kwargs)
    ratios: dict[Any, float]  # module -> ratio (Torch-Pruning applies it to the layers inside)


def _prune_scope(
    scope: _Scope,
    recipe: Recipe,
    cfg: PruneConfig,
    plan: _Plan,
    attention: dict[str, Attention],
    protected: list[str],
) -> tuple[_Graph, _InputRecorder]:
    """Prune one scope in place under ``plan``, leaving whole what cannot be pruned safely."""
    import torch_pruning as tp
    from torch import nn

    join = (lambda n: f"{scope.prefix}.{n}" if n else scope.prefix) if scope.prefix else str
    modules = {join(n): m for n, m in scope.module.named_modules()}
    names = {m: n for n, m in modules.items()}
    inputs = _InputRecorder(scope.module, scope.prefix)  # module inputs' grad_fn, in the trace
    num_heads = {p: a.heads for a in attention.values() for p in a.projections if p in names}
    importance = (
        tp.importance.GroupTaylorImportance()
        if cfg.importance == "taylor"
        else tp.importance.GroupMagnitudeImportance(p=2)
    )
    # Groups are rooted at these layers' output channels. Embedding and MultiheadAttention join
    # Torch-Pruning's default Conv/Linear: otherwise an embedding width that no Linear writes
    # into (a CLIP-style position table) or an attention width is never pruned. An embedding's
    # output is its width; its vocabulary is never pruned.
    roots = [nn.Conv1d, nn.Conv2d, nn.Linear, nn.MultiheadAttention, nn.Embedding]
    recurrent = [m for m in scope.module.modules() if isinstance(m, nn.RNNBase)]
    ignored = [modules[n] for n in [*protected, *plan.left_whole] if n in modules]
    ignored += recurrent  # their hidden width stays; their input width follows its producer
    try:
        with warnings.catch_warnings():
            # Torch-Pruning warns about parameters outside modules (ViT's cls_token, positions):
            # pruning their last dim, the hidden width, is right for them, and users can do nothing.
            warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
            pruner = tp.pruner.MetaPruner(
                scope.module,
                scope.example,
                importance=importance,
                global_pruning=cfg.global_pruning,
                pruning_ratio=0.0,
                pruning_ratio_dict=scope.ratios,
                ignored_layers=ignored,
                round_to=cfg.round_to,
                num_heads=num_heads,
                prune_num_heads=bool(num_heads),
                prune_head_dims=False,
                head_pruning_ratio_dict={
                    p: by_module_ratio(names[p], recipe, plan) for p in num_heads
                },
                root_module_types=roots,
                customized_pruners={t: _recurrent_pruner() for t in {type(m) for m in recurrent}},
                forward_fn=call,
            )
    except Exception as err:
        raise _Untraceable(f"Torch-Pruning cannot trace it: {type(err).__name__}: {err}") from None
    finally:
        inputs.close()
    graph = _Graph(pruner.DG, names, set(num_heads), scope.prefix)
    for name, why in graph.channel_last_flattens().items():
        plan.left_whole.setdefault(name, why)
        pruner.ignored_layers.extend(modules[name].modules())
    try:
        for group in pruner.step(interactive=True):
            frozen = graph.frozen_in(group, recipe, plan)
            if frozen:
                plan.left_whole.setdefault(graph.root(group), frozen)
                continue
            group.prune()
    except Exception as err:
        raise _Untraceable(f"Torch-Pruning failed on it: {type(err).__name__}: {err}") from None
    for a in attention.values():
        if a.projections[0] in names:
            a.update()
    return graph, inputs


def _taylor_gradients(
    model: nn.Module, cfg: PruneConfig, taylor_batches: Callable[[nn.Module], Any] | None
) -> None:
    if cfg.importance == "taylor":
        if taylor_batches is None:
            raise RecipeError("prune.importance 'taylor' needs calibration data")
        taylor_batches(model)


def _attempt(
    model: nn.Module,
    feeds: Mapping[str, torch.Tensor],
    recipe: Recipe,
    cfg: PruneConfig,
    plan: _Plan,
    attention: dict[str, Attention],
    taylor_batches: Callable[[nn.Module], Any] | None,
) -> str | None:
    """Prune ``model`` in place under ``plan``, on one graph, so each branch's output width
    follows into the fusion head; None when the pruned model runs, else the failure (after
    adding the layers that caused it to ``plan.left_whole``)."""
    modules = dict(model.named_modules())
    by_module = {
        modules[name]: r
        for name, r in (
            (p, plan.ratios[b]) for b, prefixes in recipe.branches.items() for p in prefixes
        )
        if name in modules
    }
    _taylor_gradients(model, cfg, taylor_batches)
    scope = _Scope(model, "", dict(feeds), by_module)
    graph, inputs = _prune_scope(scope, recipe, cfg, plan, attention, plan.protected)
    failure = forward_failure(model, feeds)
    if failure is None:
        return None
    where, message = failure
    done = {*plan.left_whole, *plan.protected}
    culprits = graph.culprits(where, inputs.grad_fns, done) - done
    if not culprits:
        raise TargetBuildError(f"the pruned model {message}", hint=FORWARD_HINT)
    for name in culprits:
        plan.left_whole[name] = f"with it pruned, the model {message[:240]}"
    return message


def _attempt_by_branch(
    model: nn.Module,
    feeds: Mapping[str, torch.Tensor],
    recipe: Recipe,
    cfg: PruneConfig,
    plan: _Plan,
    attention: dict[str, Attention],
    taylor_batches: Callable[[nn.Module], Any] | None,
) -> str | None:
    """Prune each branch's modules on a graph of their own, their output width kept (the
    fusion head reads it): for models Torch-Pruning cannot trace whole (a GRU's or LSTM's output
    in a concat). A branch it cannot trace either is left whole."""
    import torch

    modules = dict(model.named_modules())
    examples: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {}
    hooks = [
        modules[p].register_forward_pre_hook(
            lambda _m, a, k, p=p: examples.setdefault(p, (a, k)), with_kwargs=True
        )
        for prefixes in recipe.branches.values()
        for p in prefixes
        if p in modules
    ]
    try:
        with torch.no_grad():
            model(**feeds)
    finally:
        for h in hooks:
            h.remove()
    _taylor_gradients(model, cfg, taylor_batches)
    for branch, prefixes in recipe.branches.items():
        ratio = plan.ratios.get(branch, 0.0)
        for prefix in (p for p in prefixes if p in examples and ratio > 0):
            sub = modules[prefix]
            own = [f"{prefix}.{n}" if n else prefix for n in output_modules(sub, examples[prefix])]
            scope = _Scope(sub, prefix, examples[prefix], {sub: ratio})
            try:
                _prune_scope(scope, recipe, cfg, plan, attention, [*plan.protected, *own])
            except _Untraceable as err:
                plan.ratios[branch] = 0.0
                plan.left_whole[prefix] = f"branch '{branch}' left whole: {str(err)[:240]}"
                return str(err)
    failure = forward_failure(model, feeds)
    if failure is None:
        return None
    where, message = failure
    branch = module_branch(where, recipe)
    if plan.ratios.get(branch, 0.0) == 0:
        raise TargetBuildError(f"the pruned model {message}", hint=FORWARD_HINT)
    plan.ratios[branch] = 0.0
    plan.left_whole[where] = f"branch '{branch}' left whole: with it pruned, the model {message}"
    return message


def _recurrent_pruner() -> Any:
    """Torch-Pruning's rule for GRU/RNN/LSTM inputs: the first layer's input width follows the
    layer that feeds it. Their hidden width is never pruned (the layers are ignored roots):
    Torch-Pruning has no rule for GRU and its LSTM rule slices the gate weights along the wrong
    dimension (1.6)."""
    import torch_pruning as tp

    class RecurrentInputs(tp.pruner.BasePruningFunc):  # type: ignore[misc]
        def prune_in_channels(self, layer: Any, idxs: list[int]) -> Any:
            keep = sorted(set(range(layer.input_size)) - set(idxs))
            for suffix in ("", "_reverse") if layer.bidirectional else ("",):
                name = f"weight_ih_l0{suffix}"
                setattr(layer, name, self._prune_parameter_and_grad(getattr(layer, name), keep, 1))
            layer.input_size = len(keep)
            return layer

        def prune_out_channels(self, layer: Any, idxs: list[int]) -> Any:
            # Never called: recurrent layers are ignored roots, so no group narrows their output.
            raise RuntimeError("the hidden width of a recurrent layer is left whole")

        def get_out_channels(self, layer: Any) -> int:
            return int(layer.hidden_size) * (2 if layer.bidirectional else 1)

        def get_in_channels(self, layer: Any) -> int:
            return int(layer.input_size)

    return RecurrentInputs()


def by_module_ratio(name: str, recipe: Recipe, plan: _Plan) -> float:
    return plan.ratios.get(module_branch(name, recipe), 0.0)


FORWARD_HINT = (
    "Torch-Pruning cannot follow code that fixes a width (a reshape to a constant, a parameter "
    "read directly); add that module, or its neighbours, to prune.protect"
)


class _InputRecorder:
    """The grad_fn of every module's tensor inputs during Torch-Pruning's trace: it links a
    module (a GRU, a layer that failed) to the graph nodes that feed it."""

    def __init__(self, model: nn.Module, prefix: str = "") -> None:
        self.grad_fns: dict[str, list[Any]] = {}
        self._hooks = [
            m.register_forward_pre_hook(
                lambda _m, args, kwargs, name=name: self._record(name, (*args, *kwargs.values())),
                with_kwargs=True,
            )
            for name, m in (
                (".".join(p for p in (prefix, n) if p), m) for n, m in model.named_modules()
            )
            if name
        ]

    def _record(self, name: str, values: tuple[Any, ...]) -> None:
        fns = [getattr(v, "grad_fn", None) for v in values]
        self.grad_fns.setdefault(name, []).extend(f for f in fns if f is not None)

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()


def _channel_moved(rank: int | None, path: list[Any]) -> bool:
    """Whether the permutes/transposes on ``path`` (nearest the layer last) move a layer's
    channel dim: dim 1 of a conv output (``rank`` known), the last dim of a Linear/Embedding
    output (rank unknown until a permute names every dim)."""
    pos = 1 if rank is not None else -1
    start = pos
    for fn in reversed(path):
        if "Permute" in fn.name():
            dims = [int(d) for d in fn._saved_dims]
            rank = len(dims)
            pos, start = dims.index(pos % rank), start % rank
        else:  # a transpose: decidable when the rank is known or both dims count from the end
            pair = (int(fn._saved_dim0), int(fn._saved_dim1))
            if rank is not None:
                d0, d1 = (d % rank for d in pair)
                pos %= rank
                pos = d1 if pos == d0 else d0 if pos == d1 else pos
            elif pos < 0 and all(d < 0 for d in pair):
                pos = pair[1] if pos == pair[0] else pair[0] if pos == pair[1] else pos
    return pos != start if rank is None else pos % rank != start % rank


def _is_permute(grad_fn: Any) -> bool:
    kind = grad_fn.name()
    return ("Permute" in kind and hasattr(grad_fn, "_saved_dims")) or (
        "Transpose" in kind and hasattr(grad_fn, "_saved_dim0")
    )


class _Graph:
    """Questions about Torch-Pruning's dependency graph, by module name."""

    def __init__(
        self, graph: Any, names: dict[Any, str], head_projections: set[Any], scope: str = ""
    ) -> None:
        import torch_pruning as tp

        self.dg, self.names, self.heads = graph, names, head_projections
        t = tp.ops.OPTYPE
        self.layer_types = {t.CONV, t.DEPTHWISE_CONV, t.LINEAR, t.EMBED, t.LSTM, t.MHA}
        self.reshape, self.depthwise = t.RESHAPE, t.DEPTHWISE_CONV
        self.output_op = tp.ops._OutputOp
        self.scope = scope
        self.by_grad_fn = {n.grad_fn: n for n in graph.module2node.values() if n.grad_fn}

    def _name(self, node: Any) -> str | None:
        return self.names.get(node.module)

    def channel_last_flattens(self) -> dict[str, str]:
        """Layers whose channels reach a flatten/reshape through a permute that moves them off
        dim 1 (MTCNN's ``x.permute(0, 3, 2, 1).view(n, -1)``): Torch-Pruning maps channel c of
        the flatten to a channel-first block, so it would remove the wrong columns."""
        found: dict[str, str] = {}
        for node in self.dg.module2node.values():
            if node.type != self.reshape:
                continue
            stack: list[tuple[Any, tuple[Any, ...]]] = [(i, ()) for i in node.inputs]
            seen: set[tuple[int, tuple[int, ...]]] = set()
            while stack:
                current, path = stack.pop()
                key = (id(current), tuple(id(f) for f in path))
                if key in seen or current.type == self.reshape:  # a reshape is judged on its own
                    continue
                seen.add(key)
                if current.type in self.layer_types:
                    name = self._name(current)
                    rank = getattr(current.module, "_conv_forward", None) and (
                        current.module.weight.dim()
                    )
                    if (
                        path
                        and name
                        and current.module not in self.heads
                        and _channel_moved(rank or None, list(path))
                    ):
                        found[name] = (
                            "its channels reach a flatten/reshape through a permute (channel-last "
                            "layout), which Torch-Pruning maps as channel-first"
                        )
                    if current.type != self.depthwise:
                        continue
                fn = current.grad_fn
                step = (fn,) if fn is not None and _is_permute(fn) else ()
                stack.extend((i, path + step) for i in current.inputs)
        return found

    def producers(self, grad_fns: list[Any]) -> set[str]:
        """The layers whose outputs reach these tensors through parameter-free ops."""
        stack = [self.by_grad_fn[f] for f in self._traced(grad_fns)]
        found, seen = set(), set()
        while stack:
            node = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            name = self._name(node)
            if node.type in self.layer_types and name:
                found.add(name)
                if node.type != self.depthwise:
                    continue
            stack.extend(node.inputs)
        return found

    def _traced(self, grad_fns: list[Any], limit: int = 10_000) -> list[Any]:
        """The nearest autograd nodes Torch-Pruning traced, from these: a module whose output
        reaches no model output (an unused BERT pooler) is not in its graph, but what feeds it
        is."""
        found: list[Any] = []
        stack: list[Any] = list(grad_fns)
        seen: set[Any] = set()
        while stack and len(seen) < limit:
            fn = stack.pop()
            if fn is None or fn in seen:
                continue
            seen.add(fn)
            if fn in self.by_grad_fn:
                found.append(fn)
                continue
            stack.extend(f for f, _ in getattr(fn, "next_functions", ()))
        return found

    def root(self, group: Any) -> str:
        module = group[0][0].target.module
        return self.names.get(module, str(module))

    def frozen_in(self, group: Any, recipe: Recipe, plan: _Plan) -> str | None:
        """Why a group must not be pruned: it would narrow a layer in a branch whose ratio is 0
        (seen: a channel-last reshape feeding the fusion concat coupled audio with text)."""
        for dep, idxs in group:
            if idxs and isinstance(dep.target.module, self.output_op):
                return "pruning it would change the width of an output of " + (
                    f"'{self.scope}', which the fusion head reads" if self.scope else "the model"
                )
            if not idxs or not self.dg.is_out_channel_pruning_fn(dep.handler):
                continue
            name = self.names.get(dep.target.module)
            if name is None:
                continue
            branch = module_branch(name, recipe)
            if plan.ratios.get(branch, 0.0) == 0:
                return f"pruning it would also narrow {name} in branch '{branch}', whose ratio is 0"
        return None

    def culprits(self, where: str, inputs: dict[str, list[Any]], done: set[str]) -> set[str]:
        """Layers to leave whole after the pruned model failed in module ``where``: its own
        layers when it has some (an attention block), else the layers feeding it, else (they
        are whole already: ``done``) the layer itself."""
        module = next((m for m, n in self.names.items() if n == where), None)
        if module is None:
            return set()
        inner = {
            self.names[m]
            for m in module.modules()
            if m is not module
            and m in self.dg.module2node
            and self.dg.module2node[m].type in self.layer_types
        }
        return inner or self.producers(inputs.get(where, [])) - done or {where} - done


def forward_failure(model: nn.Module, feeds: Mapping[str, torch.Tensor]) -> tuple[str, str] | None:
    """Run the pruned model: None, or the innermost module that was running when it failed and
    the message (naming the last module to finish before it: often the real culprit)."""
    import torch

    stack: list[str] = []
    finished: list[str] = []

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
        where = stack[-1] if stack else ""
        before = next((f for f in reversed(finished) if not where.startswith(f + ".")), None)
        after = f", right after {before}" if before else ""
        shown = where or "(the model's own forward)"
        return where, f"fails in {shown}{after}: {type(err).__name__}: {str(err)[:300]}"
    finally:
        for h in hooks:
            h.remove()
    return None


def check_forward(model: nn.Module, feeds: Mapping[str, torch.Tensor]) -> None:
    """Run the pruned model; a failure names the innermost module that was running."""
    failure = forward_failure(model, feeds)
    if failure is not None:
        raise TargetBuildError(f"the pruned model {failure[1]}", hint=FORWARD_HINT) from None


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
