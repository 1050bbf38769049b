"""The YAML reader behind every file and option spd parses: safe, bounded, YAML 1.2 booleans.

- Safe: only plain data (mappings, lists, scalars) is built; a `!!python/...` tag is an error,
  so a config, sweep or target file someone else wrote cannot run code.
- Bounded: a file is read only up to `MAX_YAML_BYTES`, and a document may expand to at most
  `MAX_YAML_NODES` nodes once its aliases are resolved. A 1 kB "billion laughs" file of nested
  aliases would otherwise grow to gigabytes in memory (and inside an error message).
- Booleans as in YAML 1.2: only true/false (any case) are booleans. YAML 1.1 also reads
  yes/no/on/off as booleans, which turns `compile: off` into `false` and makes a documented
  value unusable; here such words stay text, and pydantic still accepts them for a bool field.
"""

import re
from typing import Any

import yaml

MAX_YAML_BYTES = 16 * 2**20
MAX_YAML_NODES = 200_000

_BOOL_TAG = "tag:yaml.org,2002:bool"
_YAML12_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")


class BoundedSafeLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` whose implicit booleans are YAML 1.2's (true/false only)."""


# The resolvers are a class attribute, shared with SafeLoader unless replaced: copy, then edit.
BoundedSafeLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


BoundedSafeLoader.add_implicit_resolver(_BOOL_TAG, _YAML12_BOOL, list("tTfF"))


class YAMLTooLarge(yaml.YAMLError):
    """A document that expands past `MAX_YAML_NODES` nodes, or that refers to itself."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


def _expanded_size(root: yaml.Node) -> int:
    """The number of nodes of `root` with every alias expanded; stops early past the bound.

    An alias is the same node object as its anchor, so sizes are memoised by identity: a chain of
    aliases is measured in linear time although its expansion is exponential.
    """
    sizes: dict[int, int] = {}
    in_progress: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in in_progress:
            raise YAMLTooLarge("an anchor refers to itself (a recursive alias)")
        in_progress.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        in_progress.discard(key)
        if total > MAX_YAML_NODES:
            raise YAMLTooLarge(
                f"its aliases expand to more than {MAX_YAML_NODES} values; write the values out "
                "or use fewer nested aliases"
            )
        sizes[key] = total
        return total

    return size(root)


def load_bounded(text: str, loader: type[BoundedSafeLoader] = BoundedSafeLoader) -> Any:
    """Parse one YAML document with `loader`, refusing one that is or expands too large.

    Raises `yaml.YAMLError` (a `YAMLTooLarge` for the bounds); callers turn it into their message.
    """
    if len(text) > MAX_YAML_BYTES:
        raise YAMLTooLarge(f"it is larger than {MAX_YAML_BYTES // 2**20} MiB")
    parser = loader(text)
    try:
        node = parser.get_single_node()
        if node is None:
            return None
        _expanded_size(node)
        return parser.construct_document(node)
    finally:
        parser.dispose()  # pyright: ignore[reportAttributeAccessIssue]
