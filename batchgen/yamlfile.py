"""YAML with line numbers: safe loading that remembers where every value stood.

Errors must name the line (`night.yaml:12: seed 5 is out of range`), which plain
`yaml.safe_load` forgets. Only the safe constructors are used: no arbitrary tags.
"""

from __future__ import annotations

from typing import Any

import yaml

Path_ = tuple[str | int, ...]
_PLAIN_TAGS = frozenset({"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"})


class YamlProblem(ValueError):
    def __init__(self, line: int, message: str) -> None:
        self.line = line
        super().__init__(message)


def load(text: str) -> tuple[Any, dict[Path_, int]]:
    """Parse one YAML document -> (data, {key path: 1-based line})."""
    try:
        loader = yaml.SafeLoader(text)
    except yaml.YAMLError as err:
        raise YamlProblem(1, f"invalid YAML: {err}") from None
    try:
        node = loader.get_single_node()
        lines: dict[Path_, int] = {}
        data = _walk(loader, node, (), lines) if node is not None else None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark else 1
        raise YamlProblem(line, f"invalid YAML: {err.problem or err}") from None
    except yaml.YAMLError as err:
        raise YamlProblem(1, f"invalid YAML: {err}") from None
    finally:
        loader.dispose()
    return data, lines


def _walk(loader: yaml.SafeLoader, node: yaml.Node, path: Path_, lines: dict[Path_, int]) -> Any:
    lines[path] = node.start_mark.line + 1
    if not isinstance(node, yaml.ScalarNode) and node.tag not in _PLAIN_TAGS:
        raise YamlProblem(lines[path], f"invalid YAML: tag {node.tag!r} is not allowed")
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float | bool) and key is not None:
                raise YamlProblem(key_node.start_mark.line + 1, f"key {key!r} must be a string")
            key = str(key)
            if key in result:
                raise YamlProblem(key_node.start_mark.line + 1, f"key {key!r} appears twice")
            result[key] = _walk(loader, value_node, (*path, key), lines)
            lines[(*path, key)] = key_node.start_mark.line + 1  # errors point at the key
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_walk(loader, item, (*path, i), lines) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)
