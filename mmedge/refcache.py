"""PyTorch reference outputs, cached per (model, inputs): the quantize → compare loop then runs
PyTorch once per model and data set, not once per comparison (50-170 s each on a real model).

The key covers what decides the outputs: the recipe's model section, the bytes of its weights
or program file, the factory module's source, the torch version, the requested outputs, and
the inputs' bytes. The model is loaded only on a miss.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mmedge.hashing import sha256_arrays, sha256_json
from mmedge.inputs import Feeds
from mmedge.recipe import Recipe


def cache_dir() -> Path:
    base = (
        os.environ.get("MMEDGE_CACHE_DIR")
        or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mmedge"
    )
    return Path(base) / "reference-outputs"


def model_key(recipe: Recipe) -> str:
    from importlib import metadata

    from mmedge.hashing import sha256_file

    src = recipe.model
    parts: dict[str, Any] = {
        "model": src.model_dump(mode="json", exclude={"import_path"}),
        "outputs": recipe.outputs,
        "torch": metadata.version("torch"),
    }
    for name in ("weights", "path"):
        path = getattr(src, name)
        if path is not None and Path(path).is_file():
            parts[f"{name}_sha256"] = sha256_file(Path(path))
    if src.factory is not None:
        module = src.factory.split(":")[0]
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            spec = None
        origin = spec.origin if spec is not None else None
        if origin and Path(origin).is_file():  # edited factory code must not hit old outputs
            parts["factory_sha256"] = sha256_file(Path(origin))
    return sha256_json(parts)[:32]


def cached_reference(recipe: Recipe, load: Callable[[], Callable[[Feeds], Feeds]]) -> Any:
    """A ``feeds -> outputs`` callable that answers from the cache and calls ``load()`` (the
    PyTorch model, loaded once) only for inputs it has not seen."""
    folder = cache_dir() / model_key(recipe)
    runner: list[Callable[[Feeds], Feeds]] = []

    def run(feeds: Feeds) -> Feeds:
        path = folder / f"{sha256_arrays(feeds)}.npz"
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {k: npz[k] for k in recipe.outputs}
        except (OSError, KeyError, ValueError, EOFError):
            pass  # a miss, or a damaged entry: computed again
        if not runner:
            runner.append(load())
        result = runner[0](feeds)
        try:
            from mmedge.rundir import atomic_write_bytes

            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, _npz_bytes(result))
        except OSError:
            pass  # a cache that cannot be written costs speed, never the comparison
        return result

    return run


def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()
