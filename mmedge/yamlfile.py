"""YAML read with limits: aliases may not expand a small file into a huge document.

An alias bomb (``a: &a [x, x, ...]``, ``b: &b [*a, *a, ...]``, ...) is tiny as text and as the
composed node graph (aliases share nodes), and explodes only when something walks it as a tree
(validation, hashing, dumping): the expanded size is counted on the graph, before that.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

MAX_NODES = 1_000_000  # expanded; a large recipe has a few hundred


class YamlLimitError(ValueError):
    pass


def load_yaml(path: Path) -> Any:
    """The document in ``path``; `UnicodeDecodeError`, `yaml.YAMLError` or `YamlLimitError`."""
    text = path.read_text(encoding="utf-8")
    if "\x00" in text:
        raise YamlLimitError("holds NUL bytes: a binary file, not YAML")
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:  # PyYAML composes nested collections recursively
            raise YamlLimitError("nests deeper than the YAML parser can follow") from None
        if node is None:
            return None
        if _expanded(node, {}, 0) > MAX_NODES:
            raise YamlLimitError(
                f"expands to more than {MAX_NODES:,} values through its aliases: an alias "
                "bomb, or aliases nested far deeper than a recipe needs"
            )
        try:
            return loader.construct_document(node)
        except (ValueError, LookupError, AttributeError, TypeError, OverflowError) as err:
            # Scalars PyYAML's safe constructors fail on with Python errors: an int past
            # Python's digit limit, a date like 2001-02-30, `!!bool maybe`, `!!timestamp x`.
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read a value ({type(err).__name__}: {err})", node.start_mark
            ) from None
    finally:
        loader.dispose()


def _expanded(node: yaml.Node, memo: dict[int, int], depth: int) -> int:
    if depth > 200:
        raise YamlLimitError("nests more than 200 levels deep")
    key = id(node)
    if memo.get(key) == 0:  # met again inside itself: SafeLoader would build a cycle, which
        # passes validation (free-form kwargs) and then breaks hashing and JSON dumping
        raise YamlLimitError("holds a recursive alias: a value that contains itself")
    if key in memo:
        return memo[key]
    memo[key] = 0  # in progress
    total = 1
    if isinstance(node, yaml.SequenceNode):
        total += sum(_expanded(n, memo, depth + 1) for n in node.value)
    elif isinstance(node, yaml.MappingNode):
        total += sum(
            _expanded(k, memo, depth + 1) + _expanded(v, memo, depth + 1) for k, v in node.value
        )
    total = min(total, MAX_NODES + 1)  # enough to say "over"; keeps the numbers small
    memo[key] = total
    return total
