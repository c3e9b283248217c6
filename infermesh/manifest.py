"""Strict manifest loading: YAML (or JSON) documents to validated objects, all or nothing.

Strict means: duplicate keys are errors (PyYAML silently keeps the last), every error names its
file, line and field path, and a file of several objects without `---` between them is diagnosed
as such instead of failing on a duplicate `apiVersion`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from infermesh.errors import BadRequest, Invalid
from infermesh.model import Resource, check_object, identity
from infermesh.model.meta import Loc

_MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
# Keys that repeat at the top level when a second object was pasted without `---`.
_DOCUMENT_START_KEYS = ("apiVersion", "kind")
_MERGE_TAG = "tag:yaml.org,2002:merge"

# id() of each constructed dict/list -> {key or index: 1-based line}
LineIndex = dict[int, dict[Any, int]]


@dataclass(eq=False)
class Document:
    """One top-level object as read, and where it came from."""

    data: dict[str, Any]
    source: str
    line: int  # 1-based line where the object starts
    lines: LineIndex = field(default_factory=dict, repr=False)

    def line_of(self, loc: Loc) -> int:
        """The line of the deepest part of `loc` present in the document (for error messages)."""
        line, node = self.line, self.data
        for part in loc:
            marks = self.lines.get(id(node))
            if marks is None or part not in marks:
                break
            line, node = marks[part], node[part]
        return line


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys and records the line of every key and item."""

    def __init__(self, stream: str, source: str = "<input>") -> None:
        super().__init__(stream)
        self.source = source
        self.lines: LineIndex = {}
        self._root: yaml.Node | None = None

    def construct_document(self, node: yaml.Node) -> Any:
        self._root = node
        return super().construct_document(node)

    def construct_strict_map(self, node: yaml.MappingNode) -> Iterator[dict[Any, Any]]:
        data: dict[Any, Any] = {}
        yield data
        self._reject_duplicates(node)
        data.update(self.construct_mapping(node))
        # node.value is flattened now (merge keys resolved); a later key wins, as in the dict.
        self.lines[id(data)] = {
            self.construct_object(key): key.start_mark.line + 1 for key, _ in node.value
        }

    def construct_strict_seq(self, node: yaml.SequenceNode) -> Iterator[list[Any]]:
        data: list[Any] = []
        yield data
        data.extend(self.construct_sequence(node))
        self.lines[id(data)] = {i: item.start_mark.line + 1 for i, item in enumerate(node.value)}

    def _reject_duplicates(self, node: yaml.MappingNode) -> None:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:
                continue  # unhashable key: construct_mapping reports it with its position
            if first is not key_node.start_mark:
                raise self._duplicate(node, key, key_node.start_mark, first)

    def _duplicate(
        self, node: yaml.Node, key: Any, mark: yaml.Mark, first: yaml.Mark
    ) -> BadRequest:
        line, column = mark.line + 1, mark.column + 1
        details = {"source": self.source, "line": line, "column": column}
        if node is self._root and key in _DOCUMENT_START_KEYS:
            return BadRequest(
                f"{self.source}:{line}: a second document starts at line {line} ({key!r} appears "
                f"again at the top level, first at line {first.line + 1}); YAML needs a line "
                f"'---' between documents: put '---' before line {line}",
                details,
            )
        return BadRequest(
            f"{self.source}:{line}:{column}: duplicate key {key!r} at line {line} "
            f"(first defined at line {first.line + 1})",
            {**details, "key": str(key)},
        )


StrictLoader.add_constructor("tag:yaml.org,2002:map", StrictLoader.construct_strict_map)
StrictLoader.add_constructor("tag:yaml.org,2002:seq", StrictLoader.construct_strict_seq)


def load_documents(text: str, source: str = "<input>") -> list[Document]:
    """The non-empty documents of a YAML (or, for a `.json` source, JSON) text.

    A `kind: List` document (as `mesh get -o yaml` prints) stands for its items."""
    docs = _load_json(text, source) if source.endswith(".json") else _load_yaml(text, source)
    return [item for doc in docs for item in _expand_list(doc)]


def _load_yaml(text: str, source: str) -> list[Document]:
    loader = StrictLoader(text, source)
    docs = []
    try:
        while loader.check_node():
            node = loader.get_node()
            data = loader.construct_document(node)
            if data is None:
                continue  # empty document (`---` with nothing after it, or only comments)
            line = node.start_mark.line + 1
            _require_mapping(data, source, line)
            docs.append(Document(data, source, line, loader.lines))
    except yaml.MarkedYAMLError as exc:
        raise _syntax_error(exc, source) from None
    except yaml.YAMLError as exc:
        raise BadRequest(f"{source}: invalid YAML: {exc}", {"source": source}) from None
    finally:
        loader.dispose()
    return docs


def _syntax_error(exc: yaml.MarkedYAMLError, source: str) -> BadRequest:
    mark = exc.problem_mark or exc.context_mark
    problem = exc.problem or exc.context or "invalid YAML"
    if exc.context and exc.problem:
        context_line = f" at line {exc.context_mark.line + 1}" if exc.context_mark else ""
        problem = f"{problem} ({exc.context}{context_line})"
    if mark is None:
        return BadRequest(f"{source}: invalid YAML: {problem}", {"source": source})
    line, column = mark.line + 1, mark.column + 1
    return BadRequest(
        f"{source}:{line}:{column}: invalid YAML: {problem}",
        {"source": source, "line": line, "column": column},
    )


def _load_json(text: str, source: str) -> list[Document]:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise BadRequest(f"{source}: duplicate key {key!r}", {"source": source, "key": key})
            out[key] = value
        return out

    try:
        data = json.loads(text, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"{source}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}",
            {"source": source, "line": exc.lineno, "column": exc.colno},
        ) from None
    items = data if isinstance(data, list) else [data]
    for item in items:
        _require_mapping(item, source, 1)
    return [Document(item, source, 1) for item in items]


def _require_mapping(data: Any, source: str, line: int) -> None:
    if not isinstance(data, dict):
        raise BadRequest(
            f"{source}:{line}: a document must be an object (a mapping with apiVersion, kind, "
            f"metadata and spec), not a {type(data).__name__}",
            {"source": source, "line": line},
        )


def _expand_list(doc: Document) -> list[Document]:
    if doc.data.get("kind") != "List":
        return [doc]
    items = doc.data.get("items")
    if not isinstance(items, list):
        raise BadRequest(
            f"{doc.source}:{doc.line}: a List needs items: a list of objects",
            {"source": doc.source, "line": doc.line, "field": "items"},
        )
    marks = doc.lines.get(id(items), {})
    out = []
    for i, item in enumerate(items):
        line = marks.get(i, doc.line)
        _require_mapping(item, doc.source, line)
        out.append(Document(item, doc.source, line, doc.lines))
    return out


def parse_manifest(text: str, source: str = "<input>") -> list[Resource]:
    """Every object of a manifest, validated; `Invalid` lists every problem, with its line."""
    return parse_documents(load_documents(text, source))


def load_paths(paths: Iterable[str | Path]) -> list[Resource]:
    """Objects from files, directories (their *.yaml, *.yml, *.json, sorted, not recursive) and
    `-` (stdin), validated together: one bad document anywhere and nothing is returned."""
    docs = []
    for path in paths:
        for source, text in _read(path):
            docs += load_documents(text, source)
    return parse_documents(docs)


def _read(path: str | Path) -> list[tuple[str, str]]:
    if str(path) == "-":
        return [("<stdin>", sys.stdin.read())]
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix in _MANIFEST_SUFFIXES)
        if not files:
            raise BadRequest(
                f"{p}: no *.yaml, *.yml or *.json files in this directory", {"source": str(p)}
            )
        return [(str(f), _read_text(f)) for f in files]
    return [(str(p), _read_text(p))]


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadRequest(f"{path}: no such file or directory", {"source": str(path)}) from None
    except UnicodeDecodeError as exc:
        raise BadRequest(
            f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})", {"source": str(path)}
        ) from None
    except OSError as exc:
        raise BadRequest(f"{path}: cannot read: {exc.strerror}", {"source": str(path)}) from None


def parse_documents(docs: list[Document]) -> list[Resource]:
    """Validate documents together; the same object twice must be the same definition."""
    objects: list[Resource] = []
    errors: list[dict[str, Any]] = []
    placed: dict[tuple[str, str, str], tuple[Resource, Document]] = {}
    for doc in docs:
        obj, problems = check_object(doc.data)
        kind, name = identity(doc.data)
        for p in problems:
            errors.append(
                {
                    "source": doc.source,
                    "line": doc.line_of(p.loc),
                    "field": p.field,
                    "message": p.message,
                    "kind": kind,
                    "name": name,
                }
            )
        if obj is None:
            continue
        scope = "" if obj.cluster_scoped else obj.metadata.project
        key = (obj.kind, scope, obj.metadata.name)
        if key not in placed:
            placed[key] = (obj, doc)
            objects.append(obj)
        elif placed[key][0] != obj:
            first = placed[key][1]
            errors.append(
                {
                    "source": doc.source,
                    "line": doc.line_of(("metadata", "name")),
                    "field": "metadata.name",
                    "kind": kind,
                    "name": name,
                    "message": f"{kind} {name} is defined again, differently; first at "
                    f"{first.source}:{first.line}",
                }
            )
    if errors:
        first_error = errors[0]
        raise Invalid(
            "\n".join(f"{e['source']}:{e['line']}: {e['field']}: {e['message']}" for e in errors),
            {
                "source": first_error["source"],
                "line": first_error["line"],
                "field": first_error["field"],
                "errors": errors,
            },
        )
    return objects
