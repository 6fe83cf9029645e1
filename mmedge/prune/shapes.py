"""A pruned model as its own class: the layer widths pruning changed, saved as JSON, re-applied.

``mmedge prune`` saves the pruned weights (safetensors) and, per module, the integer attributes
that differ from the unpruned model (``in_features``, ``out_channels``, ``num_attention_heads``,
``normalized_shape``...). Loading builds the model with its factory, sets those attributes,
gives every parameter and buffer the saved tensor's shape, and loads the weights strictly. The
pruned model is then the same Python class as the original: it goes through the same exporter
(TorchScript keeps GELU/LayerNorm fusions the dynamo path of a ``torch.export`` program lost)
and keeps its module names, so latency and precision policies are still attributed per branch.
No pickle is involved (Torch-Pruning's own ``tp.state_dict`` needs one).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmedge.errors import ModelLoadError
from mmedge.rundir import atomic_write_json

if TYPE_CHECKING:
    from torch import nn

FORMAT = "mmedge-shapes/1"


def _widths(module: nn.Module) -> dict[str, Any]:
    """The module's public int and int-tuple attributes (bools are not widths)."""
    found: dict[str, Any] = {}
    for attr, value in vars(module).items():
        if attr.startswith("_") or isinstance(value, bool):
            continue
        if isinstance(value, int) or (
            isinstance(value, tuple | list)
            and value
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        ):
            found[attr] = value
    return found


def changed_shapes(pruned: nn.Module, original: nn.Module) -> dict[str, dict[str, Any]]:
    """Per module name, the width attributes that pruning changed."""
    before = dict(original.named_modules())
    changed: dict[str, dict[str, Any]] = {}
    for name, module in pruned.named_modules():
        old = _widths(before[name]) if name in before else {}
        diff = {a: v for a, v in _widths(module).items() if old.get(a, v) != v}
        if diff:
            changed[name] = {a: list(v) if isinstance(v, tuple) else v for a, v in diff.items()}
    return changed


def save_shapes(
    pruned: nn.Module, original: nn.Module, path: Path, base: Path | None = None
) -> None:
    """``base``: the shapes ``original`` was itself built with (a pruned model pruned again),
    so the file still describes the change from what the factory builds."""
    modules = _read(base) if base is not None else {}
    for name, attrs in changed_shapes(pruned, original).items():
        modules.setdefault(name, {}).update(attrs)
    atomic_write_json(path, {"format": FORMAT, "modules": modules})


def _read(path: Path) -> dict[str, dict[str, Any]]:
    try:
        saved = json.loads(path.read_text())
        modules = saved["modules"]
        if saved.get("format") != FORMAT or not isinstance(modules, dict):
            raise ValueError(f"format is {saved.get('format')!r}, expected {FORMAT!r}")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ModelLoadError(f"cannot read layer shapes {path}: {err}") from None
    return modules


def apply_shapes(model: nn.Module, path: Path, state: Mapping[str, Any]) -> None:
    """Set the saved widths on ``model`` and size its tensors like ``state``'s."""
    import torch

    modules = _read(path)
    named = dict(model.named_modules())
    for name, attrs in modules.items():
        if name not in named:
            raise ModelLoadError(
                f"{path.name} names module {name!r}, which the factory's model does not have",
                hint="the shapes were saved from another model (check model.factory/kwargs)",
            )
        module = named[name]
        widths = _widths(module)
        for attr, value in attrs.items():
            if attr not in widths or not isinstance(value, int | list):
                raise ModelLoadError(
                    f"{path.name}: {name}.{attr} = {value!r} is not a width of that module "
                    f"(its widths: {', '.join(sorted(widths)) or 'none'})",
                    hint="the shapes were saved from another model (check model.factory/kwargs)",
                )
            old = getattr(module, attr, None)
            setattr(
                module,
                attr,
                tuple(value) if isinstance(old, tuple) and isinstance(value, list) else value,
            )
    for key, tensor in state.items():
        owner_name, _, leaf = key.rpartition(".")
        owner = named.get(owner_name)
        if owner is None:
            continue
        current = getattr(owner, leaf, None)
        if not isinstance(current, torch.Tensor) or current.shape == tensor.shape:
            continue
        empty = torch.empty(tensor.shape, dtype=current.dtype)
        if isinstance(current, torch.nn.Parameter):
            setattr(owner, leaf, torch.nn.Parameter(empty, requires_grad=current.requires_grad))
        else:
            owner.register_buffer(leaf, empty)
