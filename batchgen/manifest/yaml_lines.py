"""YAML with line numbers: safe loading that remembers where every value stood.

Errors must name the line (`night.yaml:12: seed 5 is out of range`), which plain
`yaml.safe_load` forgets. Only the safe constructors are used: no arbitrary tags.
Aliases are bounded: a document whose aliases would expand past MAX_NODES nodes
(a "billion laughs") is refused before anything is built. Merge keys (`<<: *base`)
work as YAML says: the mapping's own keys win over merged ones, and a key written
twice by hand is still an error.
"""

from __future__ import annotations

from typing import Any, Final

import yaml

KeyPath = tuple[str | int, ...]  # ("grid", "seed", 0): where a value stands in the document
MAX_NODES: Final = 1_000_000  # the most nodes a document may hold once its aliases expand
_PLAIN_TAGS = frozenset({"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"})
_MERGE_TAG: Final = "tag:yaml.org,2002:merge"
_NOT_TEXT_TAGS: Final = frozenset(f"tag:yaml.org,2002:{t}" for t in ("bool", "int", "float"))


class YamlProblem(ValueError):
    def __init__(self, line: int, message: str) -> None:
        self.line = line
        super().__init__(message)


def load(
    text: str,
    *,
    shared: set[KeyPath] | None = None,
    written: dict[KeyPath, str] | None = None,
) -> tuple[Any, dict[KeyPath, int]]:
    """Parse one YAML document -> (data, {key path: 1-based line}). With `shared`, also
    note there the top-level keys whose value is aliased elsewhere (`base: &base {...}`
    kept only to be merged): a manifest need not know such keys. With `written`, note
    there the text of each value read as a boolean or a number (`off`, `1.50`), so a
    string field given one can say what to quote."""
    try:
        loader = yaml.SafeLoader(text)
    except yaml.YAMLError as err:
        raise YamlProblem(1, f"invalid YAML: {err}") from None
    try:
        node = loader.get_single_node()
        lines: dict[KeyPath, int] = {}
        if node is None:
            return None, lines
        refs = _references(node)
        data = _Walker(loader, lines, written).walk(node, ())
        if shared is not None and isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if refs.get(id(value_node), 0) > 1 and isinstance(key_node.value, str):
                    shared.add((key_node.value,))
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark else 1
        raise YamlProblem(line, f"invalid YAML: {err.problem or err}") from None
    except yaml.YAMLError as err:
        raise YamlProblem(1, f"invalid YAML: {err}") from None
    finally:
        loader.dispose()
    return data, lines


def expanded_size(root: yaml.Node, limit: int = MAX_NODES) -> int:
    """How many nodes the document holds with every alias expanded, counted without
    expanding anything (each distinct node once, as the composer shares aliased nodes).
    Raises YamlProblem past `limit`, or for an alias inside its own anchor."""
    return _measure(root, limit)[0]


def _references(root: yaml.Node) -> dict[int, int]:
    """Checks the expanded size; how many times each node is referred to (more than
    once: it is aliased)."""
    return _measure(root, MAX_NODES)[1]


def _measure(root: yaml.Node, limit: int) -> tuple[int, dict[int, int]]:
    sizes: dict[int, int] = {}
    refs: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        kids = _children(node)
        if children_done:
            open_nodes.discard(key)
            for kid in kids:
                refs[id(kid)] = refs.get(id(kid), 0) + 1
            total = 1 + sum(sizes[id(kid)] for kid in kids)
            if total > limit:
                raise YamlProblem(
                    node.start_mark.line + 1,
                    f"invalid YAML: aliases expand too far (past {limit:,} nodes): "
                    "refusing to build it",
                )
            sizes[key] = total
            continue
        if key in open_nodes:
            raise YamlProblem(node.start_mark.line + 1, "invalid YAML: an alias refers to itself")
        open_nodes.add(key)
        stack.append((node, True))
        for kid in kids:
            if id(kid) in open_nodes:
                raise YamlProblem(
                    kid.start_mark.line + 1, "invalid YAML: an alias refers to itself"
                )
            if id(kid) not in sizes:
                stack.append((kid, False))
    return sizes[id(root)], refs


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


class _Walker:
    def __init__(
        self,
        loader: yaml.SafeLoader,
        lines: dict[KeyPath, int],
        written: dict[KeyPath, str] | None = None,
    ) -> None:
        self.loader = loader
        self.lines = lines
        self.written = written
        # a mapping's own key nodes, noted before its merge keys are flattened away
        # (an aliased mapping is walked again, already flattened)
        self.own_keys: dict[int, set[int]] = {}

    def walk(self, node: yaml.Node, path: KeyPath) -> Any:
        lines = self.lines
        lines[path] = node.start_mark.line + 1
        if not isinstance(node, yaml.ScalarNode) and node.tag not in _PLAIN_TAGS:
            raise YamlProblem(lines[path], f"invalid YAML: tag {node.tag!r} is not allowed")
        if isinstance(node, yaml.MappingNode):
            return self.mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.walk(item, (*path, i)) for i, item in enumerate(node.value)]
        if self.written is not None and node.tag in _NOT_TEXT_TAGS:
            self.written[path] = str(node.value)
        return self.loader.construct_object(node, deep=True)

    def mapping(self, node: yaml.MappingNode, path: KeyPath) -> dict[str, Any]:
        own = self.own_keys.get(id(node))
        if own is None:
            own = {id(k) for k, _ in node.value if k.tag != _MERGE_TAG}
            self.own_keys[id(node)] = own
            self.loader.flatten_mapping(node)  # merged pairs first, then the node's own
        chosen: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        written: set[str] = set()
        for key_node, value_node in node.value:
            key = self.loader.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float | bool) and key is not None:
                raise YamlProblem(key_node.start_mark.line + 1, f"key {key!r} must be a string")
            key = str(key)
            if id(key_node) in own:
                if key in written:
                    raise YamlProblem(key_node.start_mark.line + 1, f"key {key!r} appears twice")
                written.add(key)
            elif key in written:
                continue  # merged keys never override the mapping's own
            # merged pairs come later-listed mapping first: the last seen is the earliest
            # listed, which YAML says wins among merged mappings
            chosen[key] = (key_node, value_node)
        result: dict[str, Any] = {}
        for key, (key_node, value_node) in chosen.items():
            result[key] = self.walk(value_node, (*path, key))
            self.lines[(*path, key)] = key_node.start_mark.line + 1  # errors point at the key
        return result
