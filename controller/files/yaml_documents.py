"""Safe YAML reading that remembers where every value was written.

Parsing uses libyaml's composer (through :class:`_Loader`, a ``CSafeLoader`` reduced to what
composing needs), which is the fast part; turning nodes into plain values happens here so that we
can, in the same pass:

* reject tags (``!!python/object``, ``!custom``, merge keys): definitions are plain data;
* reject duplicate keys, which PyYAML would silently let the last one win;
* measure what aliases would expand to *without* expanding them, so an alias bomb costs the size
  of the file, not the size of the bomb;
* keep the node tree, so that an error found later can be pointed at a line and column by walking
  the tree along the error's path (no per-value bookkeeping on the happy path).

libyaml's composer recurses in C and crashes the interpreter on very deep nesting, so nesting depth
is bounded *before* composing (see :func:`_check_depth`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import yaml
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from controller.core.problems import Location, PathSegment, Problem

try:  # The C loader is ~10x faster than the pure-Python one; never fall back silently.
    from yaml import CSafeLoader
    from yaml._yaml import CParser
except ImportError as exc:  # pragma: no cover - depends on how PyYAML was built
    raise ImportError(
        "PyYAML was built without libyaml; reinstall it with libyaml (pip install --force-reinstall "
        "--no-binary=:none: PyYAML) so that definitions parse with the C loader"
    ) from exc

DEFAULT_MAX_FILE_BYTES = 1024 * 1024
#: Most values one document may expand to through aliases. A table definition has a few hundred.
MAX_EXPANDED_VALUES = 10_000
#: Deepest nesting of collections in a document. Definitions need 5.
MAX_DEPTH = 64

_TAG = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT, _BOOL, _NULL = (_TAG + t for t in ("str", "int", "float", "bool", "null"))
_TIMESTAMP, _SEQ, _MAP, _MERGE = (_TAG + t for t in ("timestamp", "seq", "map", "merge"))
# Builder problems after which a document's value is incomplete; duplicate or non-string keys are not
# among them (the first value is kept), so the document is still checked further.
_FATAL = frozenset({"tag", "yaml-limit"})
_CONSTRUCTOR = yaml.constructor.SafeConstructor()
_SCALARS = {
    _INT: _CONSTRUCTOR.construct_yaml_int,
    _FLOAT: _CONSTRUCTOR.construct_yaml_float,
    _BOOL: _CONSTRUCTOR.construct_yaml_bool,
}
_BOOLS: dict[str, bool] = dict(_CONSTRUCTOR.bool_values)
# Characters that can open a nesting level: a file with fewer of them than _C_SAFE_DEPTH cannot nest
# deep enough to crash libyaml's composer (seen crashing between 20,000 and 50,000 levels), so the
# exact event scan is skipped for every realistic file. MAX_DEPTH itself is enforced while building.
_NESTING_CHARS = (b"[", b"{", b"-", b":", b"?")
_C_SAFE_DEPTH = 5_000

# CSafeLoader's implicit resolvers (plain scalars: which regular expressions may give which tag), by
# the scalar's first character, exactly as its Resolver consults them.
_IMPLICIT: dict[str, tuple[tuple[str, Any], ...]] = {
    first: tuple(resolvers) for first, resolvers in CSafeLoader.yaml_implicit_resolvers.items()
}
if None in _IMPLICIT or CSafeLoader.yaml_path_resolvers:  # pragma: no cover - PyYAML's defaults have none
    raise ImportError("CSafeLoader has wildcard or path resolvers; _Loader does not reproduce them")


class _Loader(CParser):
    """libyaml's parser and composer with ``CSafeLoader``'s tag resolution, and nothing else.

    The composer (in C) calls back into Python for every node: ``resolve`` for its tag and
    ``descend_resolver``/``ascend_resolver`` around it. ``CSafeLoader`` answers those with PyYAML's
    generic :class:`~yaml.resolver.Resolver`; these answer the same tags (a test holds them to it) with
    less work, since no path resolvers exist. Constructing Python values is left to :class:`_Builder`.
    """

    def descend_resolver(self, current_node: Any, current_index: Any) -> None:
        return None

    def ascend_resolver(self) -> None:
        return None

    def resolve(self, kind: type, value: Any, implicit: tuple[bool, bool] | bool) -> str:
        if kind is ScalarNode:
            if implicit[0]:  # type: ignore[index]  # a pair for scalars
                return _PLAIN_TAGS.get(value) or _plain_tag(value)
            return _STR
        return _SEQ if kind is SequenceNode else _MAP


#: Tags of plain scalars seen lately: definition files repeat the same keys and small values (``name``,
#: ``type``, ``true``, ``60``) thousands of times, and a dictionary look-up costs less than trying the
#: resolvers' regular expressions. Cleared when full, so unique values (table names) cannot grow it.
_PLAIN_TAGS: dict[str, str] = {}
_PLAIN_TAGS_SIZE = 4096


def _plain_tag(value: str) -> str:
    tag = _STR
    for candidate, regexp in _IMPLICIT.get(value[:1], ()):
        if regexp.match(value):
            tag = candidate
            break
    if len(_PLAIN_TAGS) >= _PLAIN_TAGS_SIZE:
        _PLAIN_TAGS.clear()
    _PLAIN_TAGS[value] = tag
    return tag


def _compose_all(data: bytes) -> Iterator[yaml.Node]:
    """What ``yaml.compose_all(data, Loader=CSafeLoader)`` gives, through :class:`_Loader`."""
    loader = _Loader(data)
    try:
        while loader.check_node():
            yield cast(yaml.Node, loader.get_node())
    finally:
        loader.dispose()


@dataclass(slots=True)
class SourceDocument:
    """One YAML document of a definition file: its plain value, and how to find where parts of it are.

    Positions are found lazily: the document is composed again from ``raw`` the first time an error
    needs a line number. Keeping every node (and its two marks) of a 10,000-file set alive instead
    costs more than parsing itself, mostly in the garbage collector.
    """

    path: str
    index: int
    data: Any
    raw: bytes = field(repr=False)
    #: False when a value could not be built (a tag, an alias bomb): checking the rest would only
    #: report consequences of that problem.
    usable: bool = True
    _node: yaml.Node | None = field(default=None, repr=False)

    def locate(self, path: tuple[PathSegment, ...], *, key: bool = False) -> Location:
        """Where the value at ``path`` was written (its key, with ``key``); the deepest known part."""
        target = self._root()
        last = len(path) - 1
        for position, segment in enumerate(path):
            child = _child(target, segment)
            if child is None:
                break
            key_node, value_node = child
            target = key_node if key and position == last else value_node
        return _location(self.path, target)

    def _root(self) -> yaml.Node:
        if self._node is None:
            for index, node in enumerate(_compose_all(self.raw)):
                if index == self.index:
                    self._node = node
                    break
        assert self._node is not None, "a parsed document composes again"
        return self._node


@dataclass(slots=True)
class SourceFile:
    """A definition file read from disk: its documents and what was wrong with it."""

    path: str
    documents: list[SourceDocument] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def readable(self) -> bool:
        """False when the file as a whole could not be read (syntax, size, limits)."""
        return not any(p.code.startswith("yaml") for p in self.problems)


def iter_definition_files(root: Path) -> Iterator[Path]:
    """Every ``*.yaml``/``*.yml`` file under ``root`` (or ``root`` itself), in a stable order."""
    for path in definition_files(root):
        yield Path(path)


def definition_files(root: Path) -> list[str]:
    """Every definition file under ``root`` (or ``root`` itself), in order, as problems print it.

    The same files and order as ``sorted(root.rglob("*"))`` filtered on the suffix and
    ``is_file()``, sorted by their path relative to ``root`` (directories reached through symbolic
    links are not entered, files that are symbolic links are followed), listed with one ``scandir``
    per directory instead of a ``stat`` and a few ``Path`` objects per file. Each path starts with
    ``root`` as ``Path`` prints it (``defs/a.yaml``; ``a.yaml`` for ``.``), so it also opens the file.
    """
    if root.is_file():
        return [root.as_posix()]
    found: list[str] = []
    _scan(os.fspath(root), "", found)
    found.sort()
    prefix = root.as_posix()
    prefix = "" if prefix == "." else prefix if prefix.endswith("/") else prefix + "/"
    return [prefix + relative for relative in found]


def _scan(directory: str, relative: str, found: list[str]) -> None:
    try:
        with os.scandir(directory) as listing:
            entries = list(listing)
    except PermissionError:  # as Path.rglob does: an unreadable directory holds nothing
        return
    for entry in entries:
        name = entry.name
        dot = name.rfind(".")
        if 0 < dot < len(name) - 1 and name[dot:] in (".yaml", ".yml") and entry.is_file():
            found.append(relative + name)
        if entry.is_dir() and not entry.is_symlink():
            _scan(entry.path, relative + name + "/", found)


def read_file(
    path: str | os.PathLike[str], display: str, *, max_bytes: int = DEFAULT_MAX_FILE_BYTES
) -> SourceFile:
    """Read one file into documents; never raises for bad content, reports it instead."""
    # One open and one fstat, no Path: this runs once per file of a 10,000-file set.
    with open(path, "rb", buffering=0) as file:  # noqa: PTH123
        size = os.fstat(file.fileno()).st_size
        if size > max_bytes:
            return oversized(display, size, max_bytes)
        data = file.readall()
    return parse_bytes(data, display)


def oversized(display: str, size: int, max_bytes: int) -> SourceFile:
    """A file refused for its size, unread."""
    source = SourceFile(display)
    message = f"file is {size:,} bytes, larger than the {max_bytes:,}-byte limit; split it into several files"
    source.problems.append(Problem(Location(display), message, "yaml-size"))
    return source


def parse_bytes(data: bytes, display: str) -> SourceFile:
    """Parse YAML bytes (possibly several documents) into a :class:`SourceFile`."""
    source = SourceFile(display)
    too_deep = _check_depth(data, display)
    if too_deep is not None:
        source.problems.append(too_deep)
        return source
    try:
        for index, node in enumerate(_compose_all(data)):
            if node.__class__ is ScalarNode and node.tag == _NULL and not node.value:
                continue  # an empty document, such as a trailing `---`
            # Without an anchor (no "&" anywhere) no value can be shared: no identities to track.
            builder = _SharingBuilder(display) if b"&" in data else _Builder(display)
            value = builder.build(node)
            if builder.problems:
                source.problems.extend(builder.problems)
                usable = not any(p.code in _FATAL for p in builder.problems)
                source.documents.append(SourceDocument(display, index, value, data, usable))
            else:
                source.documents.append(SourceDocument(display, index, value, data))
    except yaml.MarkedYAMLError as exc:
        source.problems.append(_yaml_error(exc, display))
    except yaml.YAMLError as exc:  # reader errors: bad encoding, control characters
        source.problems.append(Problem(Location(display), f"invalid YAML: {exc}", "yaml-syntax"))
    if not source.documents and not source.problems:
        source.problems.append(
            Problem(Location(display), "file holds no table definition (it is empty)", "empty-file")
        )
    return source


def _yaml_error(exc: yaml.MarkedYAMLError, display: str) -> Problem:
    mark = exc.problem_mark or exc.context_mark
    location = Location(display, mark.line + 1, mark.column + 1) if mark is not None else Location(display)
    message = exc.problem or "malformed document"
    if exc.context:
        message = f"{message} ({exc.context})"
    return Problem(location, f"invalid YAML: {message}", "yaml-syntax")


def _check_depth(data: bytes, display: str) -> Problem | None:
    """Refuse documents nesting deeper than MAX_DEPTH before libyaml's recursive composer sees them."""
    if len(data) < _C_SAFE_DEPTH or sum(data.count(c) for c in _NESTING_CHARS) < _C_SAFE_DEPTH:
        return None
    depth = 0
    try:
        for event in yaml.parse(data, Loader=cast(Any, _Loader)):
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    mark = event.start_mark
                    where = Location(display, mark.line + 1, mark.column + 1) if mark else Location(display)
                    return Problem(
                        where,
                        f"values nest deeper than {MAX_DEPTH} levels",
                        "yaml-limit",
                    )
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    except yaml.YAMLError:
        return None  # composing reports the syntax error with its position
    return None


def _location(path: str, node: yaml.Node) -> Location:
    mark = node.start_mark
    return Location(path, mark.line + 1, mark.column + 1)


def _child(node: yaml.Node, segment: PathSegment) -> tuple[yaml.Node, yaml.Node] | None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if key_node.value == segment:
                return key_node, value_node
    elif isinstance(node, yaml.SequenceNode) and isinstance(segment, int) and 0 <= segment < len(node.value):
        return node.value[segment], node.value[segment]
    return None


class _AliasLimit(Exception):
    """Raised inside the builder when a document is too big once aliases are expanded."""


class _Builder:
    """Turns one composed document into plain values, collecting problems as it goes.

    Every value counts 1 towards MAX_EXPANDED_VALUES (a collection: 1 plus its items' counts; a
    skipped key's value: nothing). Scalars, most of a document, are handled inline by the collection
    that holds them, and plain strings (most scalars) need nothing but their text. This one is for
    documents without anchors, where every node is reached once; see :class:`_SharingBuilder`.
    """

    __slots__ = ("display", "problems")

    def __init__(self, display: str) -> None:
        self.display = display
        self.problems: list[Problem] = []

    def build(self, node: yaml.Node) -> Any:
        if node.__class__ is ScalarNode:
            return self._scalar(node)
        try:
            value, _ = self._collection(node, 1)
        except _AliasLimit:
            self.problems.append(
                Problem(
                    _location(self.display, node),
                    f"document expands to more than {MAX_EXPANDED_VALUES:,} values through "
                    "aliases (an alias bomb?); write the values out instead",
                    "yaml-limit",
                )
            )
            return None
        return value

    def _problem(self, node: yaml.Node, message: str, code: str) -> None:
        self.problems.append(Problem(_location(self.display, node), message, code))

    def _collection(self, node: yaml.Node, depth: int) -> tuple[Any, int]:
        """A sequence or mapping node's value and expanded size (anything else is refused)."""
        if depth > MAX_DEPTH:
            self._problem(node, f"values nest deeper than {MAX_DEPTH} levels", "yaml-limit")
            return None, 1
        built: tuple[Any, int]
        if node.__class__ is MappingNode and node.tag == _MAP:
            built = self._mapping(node, depth)
        elif node.__class__ is SequenceNode and node.tag == _SEQ:
            built = self._sequence(node, depth)
        else:
            self._problem(node, f"tag {node.tag!r} is not allowed: definitions are plain data", "tag")
            built = (None, 1)
        if built[1] > MAX_EXPANDED_VALUES:
            raise _AliasLimit
        return built

    def _sequence(self, node: yaml.Node, depth: int) -> tuple[list[Any], int]:
        items: list[Any] = []
        append = items.append
        size = 1
        for child in node.value:
            if child.__class__ is ScalarNode:
                append(child.value if child.tag == _STR else self._scalar(child))
                size += 1
            else:
                value, child_size = self._collection(child, depth + 1)
                append(value)
                size += child_size
        return items, size

    def _mapping(self, node: yaml.Node, depth: int) -> tuple[dict[str, Any], int]:
        mapping: dict[str, Any] = {}
        size = 1
        for key_node, value_node in node.value:
            if key_node.__class__ is ScalarNode and key_node.tag == _STR:
                key = key_node.value
            else:
                key = self._odd_key(key_node)
                if key is None:
                    continue
            if key in mapping:
                self._duplicate(node, key_node, key)
                continue
            if value_node.__class__ is ScalarNode:
                mapping[key] = value_node.value if value_node.tag == _STR else self._scalar(value_node)
                size += 1
            else:
                mapping[key], child_size = self._collection(value_node, depth + 1)
                size += child_size
        return mapping, size

    def _duplicate(self, node: yaml.Node, key_node: yaml.Node, key: str) -> None:
        first = next(
            k for k, _ in node.value if k.__class__ is ScalarNode and k.tag == _STR and k.value == key
        )
        self._problem(
            key_node,
            f"duplicate key {key!r} (first at line {first.start_mark.line + 1}); keep one of them",
            "duplicate-key",
        )

    def _odd_key(self, node: yaml.Node) -> str | None:
        """A key that is not a plain string: a problem (merge keys, other types) and no key."""
        if node.__class__ is ScalarNode and node.tag == _MERGE:
            self._problem(node, "merge keys (<<) are not supported; write the fields out", "tag")
            return None
        got = _kind(node) if node.__class__ is not ScalarNode else f"{_kind(node)} {node.value!r}"
        self._problem(node, f"keys must be strings, got {got}", "key-type")
        return None

    def _scalar(self, node: yaml.Node) -> Any:
        tag = node.tag
        if tag in (_STR, _TIMESTAMP):  # dates stay as written: partition values are typed later
            return node.value
        if tag == _NULL:
            return None
        if tag == _INT:
            text = node.value
            if text.isdecimal() and text[0] != "0":  # what construct_yaml_int does for these
                return int(text)
        elif tag == _BOOL and node.value in _BOOLS:  # construct_yaml_bool looks up the lower case
            return _BOOLS[node.value]
        construct = _SCALARS.get(tag)
        if construct is None:
            self._problem(node, f"tag {tag!r} is not allowed: definitions are plain data", "tag")
            return None
        try:
            return construct(cast(yaml.ScalarNode, node))
        except (ValueError, KeyError, IndexError):  # explicitly tagged: `!!int abc`, `!!bool maybe`
            kind = tag.removeprefix(_TAG)
            self._problem(node, f"{node.value!r} is not a valid {kind} (tag {tag!r})", "tag")
            return None


class _SharingBuilder(_Builder):
    """A builder for documents with anchors, where an alias makes one node a value of several places."""

    __slots__ = ("_building", "_built")

    def __init__(self, display: str) -> None:
        super().__init__(display)
        # Collections already built, by node identity: an alias reuses the value (no copy) and
        # its expanded size, so a bomb is measured without being expanded.
        self._built: dict[int, tuple[Any, int]] = {}
        self._building: set[int] = set()

    def _collection(self, node: yaml.Node, depth: int) -> tuple[Any, int]:
        known = self._built.get(id(node))
        if known is not None:
            return known
        if id(node) in self._building:
            self._problem(node, "an alias refers to a value that contains it (recursive alias)", "yaml-limit")
            return None, 1
        if depth > MAX_DEPTH:  # reported, not remembered: another path to it is checked again
            return super()._collection(node, depth)
        self._building.add(id(node))
        built = super()._collection(node, depth)
        self._building.discard(id(node))
        self._built[id(node)] = built
        return built


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return str(node.tag.removeprefix(_TAG))
