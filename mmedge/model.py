"""Load the recipe's PyTorch model and run it on named feeds.

Checkpoints never go through unrestricted pickle: safetensors, or ``torch.load(weights_only=True)``.
torch is imported lazily so the rest of mmedge works on a runtime-only install.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import sys
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from mmedge.errors import InputSpecError, MmedgeError, ModelLoadError, require
from mmedge.inputs import Feeds
from mmedge.recipe import ModelSource, Recipe

if TYPE_CHECKING:
    from torch import nn


def load_torch_model(recipe: Recipe) -> nn.Module:
    """The model in eval mode, its forward signature checked against the recipe's inputs."""
    require("torch", "torch")
    src = recipe.model
    if src.path is not None and src.path.suffix == ".onnx":
        raise ModelLoadError(f"{src.path} is an ONNX model; this step needs a PyTorch model")
    if src.path is not None:
        model = _from_pt2(src)  # its train/eval mode was fixed when it was exported
        check_program_inputs(getattr(model, "exported_program", None), recipe, src.path.name)
    else:
        model = _from_factory(src)
        model.eval()
    check_signature(model, recipe)
    if src.path is None:  # (an exported program keeps no module tree to check against)
        check_branch_prefixes(model, recipe)
    return model


def check_branch_prefixes(model: nn.Module, recipe: Recipe) -> None:
    """Every branch prefix names a module: a typo would otherwise leave a branch empty, and
    its pruning ratio, precision policy and attribution would silently apply to nothing."""
    from mmedge.errors import RecipeError

    names = [n for n, _ in model.named_modules() if n]
    for branch, prefixes in recipe.branches.items():
        for prefix in prefixes:
            if not any(n == prefix or n.startswith(prefix + ".") for n in names):
                near = sorted({n.split(".")[0] for n in names})[:12]
                raise RecipeError(
                    f"branches.{branch}: prefix {prefix!r} matches no module of the model",
                    hint=f"top-level modules: {', '.join(near)}",
                )


def _from_factory(src: ModelSource) -> nn.Module:
    from torch import nn

    assert src.factory is not None
    module_name, attr = src.factory.split(":")
    for folder in reversed(src.import_path):  # first in the list is searched first
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    with user_code(f"cannot import factory module '{module_name}':"):
        module = importlib.import_module(module_name)
    if not hasattr(module, attr):
        raise ModelLoadError(f"module '{module_name}' has no attribute '{attr}'")
    with user_code(f"factory {src.factory} failed:"):
        model = getattr(module, attr)(**src.kwargs)
    if not isinstance(model, nn.Module):
        raise ModelLoadError(
            f"factory {src.factory} returned {type(model).__name__}, expected a torch.nn.Module"
        )
    if src.weights is not None:
        _load_weights(model, src)
    return model


def _load_weights(model: nn.Module, src: ModelSource) -> None:
    import torch

    path = src.weights
    assert path is not None
    if not path.is_file():
        raise ModelLoadError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt file, or a pickle that is more than weights
        raise ModelLoadError(
            f"cannot load weights {path}: {type(err).__name__}: {str(err).splitlines()[0]}",
            hint="checkpoints must be safetensors or weights-only torch files (a state dict)",
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ModelLoadError(f"{path} holds {type(state).__name__}, expected a state dict")
    if src.shapes is not None:
        from mmedge.prune.shapes import apply_shapes

        apply_shapes(model, src.shapes, state)
    try:
        result = model.load_state_dict(dict(state), strict=False)
    except RuntimeError as err:  # tensors whose shapes do not fit the model's parameters
        lines = [ln.strip() for ln in str(err).splitlines() if "size mismatch" in ln]
        raise ModelLoadError(
            f"weights {path.name} do not fit the model: "
            + ("; ".join(lines[:3]) or str(err).splitlines()[0])
            + (f" (and {len(lines) - 3} more)" if len(lines) > 3 else ""),
            hint="the weights were saved from a different configuration of this model "
            "(check model.kwargs)",
        ) from None
    if result.missing_keys or result.unexpected_keys:
        raise ModelLoadError(
            f"weights {path.name} do not match the model: "
            f"missing {result.missing_keys[:5]}{'…' if len(result.missing_keys) > 5 else ''}, "
            f"unexpected {result.unexpected_keys[:5]}"
            f"{'…' if len(result.unexpected_keys) > 5 else ''}"
        )


def _from_pt2(src: ModelSource) -> nn.Module:
    import torch

    assert src.path is not None
    if not src.path.is_file():
        raise ModelLoadError(f"model file not found: {src.path}")
    try:
        program = torch.export.load(str(src.path))
    except Exception as err:
        raise ModelLoadError(f"cannot load {src.path} as a torch.export program: {err}") from None
    return _program_module(program)


def program_input_specs(program: Any) -> dict[str, tuple[list[int | None], str]]:
    """Each user input's shape (None where dynamic) and dtype, from the program's graph."""
    found: dict[str, tuple[list[int | None], str]] = {}
    names = {str(n) for n in program.graph_signature.user_inputs}
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in names and "val" in node.meta:
            val = node.meta["val"]
            dims = [d if isinstance(d, int) else None for d in val.shape]
            found[node.name] = (dims, str(val.dtype).removeprefix("torch."))
    return found


def check_program_inputs(program: Any, recipe: Recipe, path: str) -> None:
    """A saved program (e.g. a pruned model) must take what the recipe declares."""
    specs = program_input_specs(program)
    for name, (dims, dtype) in specs.items():
        spec = recipe.inputs.get(name)
        if spec is None:
            continue  # names are checked against forward() by check_signature
        static = [d if isinstance(d, int) else None for d in spec.shape]
        mismatch = (
            len(dims) != len(static)
            or dtype != spec.dtype
            or any(
                want is not None and got is not None and want != got
                for want, got in zip(static, dims, strict=False)
            )
        )
        if mismatch:
            raise InputSpecError(
                f"{path} takes input '{name}' of shape {['?' if d is None else d for d in dims]} "
                f"({dtype}); the recipe declares {spec.shape} ({spec.dtype})",
                hint="use the recipe the program was saved with (e.g. the pruned directory's recipe.yaml)",
            )


def _program_module(program: Any) -> nn.Module:
    """An ExportedProgram's module behind a named, positional calling convention.

    The program's module takes its inputs the way they were given at export time (by
    position or by keyword) and has an opaque ``(*args, **kwargs)`` signature; mmedge feeds
    positionally in ``input_names`` order, like any other model.
    """
    from torch import nn

    args_spec, _ = program.call_spec.in_spec.children()
    by_keyword = args_spec.num_children == 0

    class ProgramModule(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = program.module()
            self.input_names = [str(n) for n in program.graph_signature.user_inputs]
            self.exported_program = program  # exported to ONNX as it is (mmedge.export)

        def forward(self, *args: Any) -> Any:
            if by_keyword:
                return self.inner(**dict(zip(self.input_names, args, strict=True)))
            return self.inner(*args)

    return ProgramModule()


def forward_parameters(model: nn.Module) -> list[inspect.Parameter]:
    """Named inputs in call order (an exported program's names come from its signature)."""
    names = getattr(model, "input_names", None)
    if isinstance(names, list):
        return [inspect.Parameter(n, inspect.Parameter.POSITIONAL_ONLY) for n in names]
    params = inspect.signature(model.forward).parameters.values()
    return [p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def check_signature(model: nn.Module, recipe: Recipe) -> None:
    """Recipe inputs must be forward parameters, and every required parameter must be fed."""
    params = forward_parameters(model)
    names = [p.name for p in params]
    unknown = [n for n in recipe.inputs if n not in names]
    required = [p.name for p in params if p.default is p.empty and p.name not in recipe.inputs]
    if unknown or required:
        raise InputSpecError(
            f"recipe inputs do not match {type(model).__name__}.forward({', '.join(names)}): "
            f"not parameters: {unknown}; parameters without an input: {required}"
        )


def ordered_args(model: nn.Module, feeds: Mapping[str, Any]) -> tuple[Any, ...]:
    """Feeds in forward's positional order (the TorchScript exporter traces positional args)."""
    return tuple(feeds[p.name] for p in forward_parameters(model) if p.name in feeds)


def torch_runner(model: nn.Module, outputs: list[str]) -> Any:
    """A ``feeds -> {output: array}`` callable, the same shape as a target Session's ``run``."""
    import torch

    def run(feeds: Mapping[str, np.ndarray]) -> Feeds:
        tensors = {k: torch.from_numpy(np.asarray(v)) for k, v in feeds.items()}
        try:
            with torch.inference_mode():
                result = model(*ordered_args(model, tensors))
        except (IndexError, RuntimeError, ValueError) as err:
            # The user's forward failing on the user's data (an index beyond an embedding, a
            # shape its reshape does not take): theirs to fix, so a message and code 4.
            shapes = ", ".join(f"{k} {list(v.shape)} {v.dtype}" for k, v in tensors.items())
            raise InputSpecError(
                f"the PyTorch model fails on these inputs ({shapes}): {type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}",
                hint="check the data against the model, e.g. token ids below the embedding's "
                "size (declare it as the input's range: [0, vocab_size])",
            ) from None
        return name_outputs(result, outputs)

    return run


def name_outputs(result: Any, outputs: list[str]) -> Feeds:
    import torch

    if isinstance(result, Mapping):
        missing = [o for o in outputs if o not in result]
        if missing:
            raise InputSpecError(
                f"model returned keys {list(result)}, recipe outputs {missing} missing"
            )
        values = [result[o] for o in outputs]
    elif isinstance(result, torch.Tensor):
        values = [result]
    else:
        values = list(result)
    if len(values) != len(outputs):
        raise InputSpecError(f"model returned {len(values)} outputs, recipe declares {outputs}")
    return {name: v.detach().cpu().numpy() for name, v in zip(outputs, values, strict=True)}


@contextlib.contextmanager
def user_code(
    what: str, error: type[MmedgeError] = ModelLoadError
) -> Iterator[None]:  # what: "<what failed>:", the message's start
    """The user's module and factory may fail in any way, sys.exit() included: each becomes an
    ``error`` that names where, never a traceback or a silent exit."""
    try:
        yield
    except ModuleNotFoundError as err:
        raise error(
            f"{what} {err}",
            hint="install the package, put the module beside the recipe, or name its folder "
            "in model.import_path",
        ) from None
    except SyntaxError as err:
        raise error(f"{what} syntax error in {err.filename} line {err.lineno}: {err.msg}") from None
    except SystemExit as err:
        raise error(f"{what} it called sys.exit({err.code!r})") from None
    except Exception as err:  # the user's code may raise anything; report it, don't crash
        raise error(f"{what} {type(err).__name__}: {err}") from None
