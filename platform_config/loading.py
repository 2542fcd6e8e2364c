"""Reading platform files: YAML (a file, or a directory of *.yaml / *.yml files read in name
order) into one declaration, or the list of everything wrong with it, each with its path."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydantic
import yaml

from .schema import PlatformFile

SECTIONS = ("gpu_types", "clusters", "tenants", "identities", "rate_cards", "grid_intensities")


@dataclass(frozen=True)
class Problem:
    path: str  # where in the file: "tenants[3].quotas.h100.nominal"
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class Invalid(Exception):
    """The declaration is refused as a whole; `problems` lists every reason."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass
class Declaration:
    """What one or more files declare, each item with the path it came from."""

    prune: bool = False
    items: dict[str, list[tuple[str, Any]]] = field(default_factory=lambda: {s: [] for s in SECTIONS})
    digest: str = ""
    source: str = ""

    def __iter__(self):
        return iter(self.items.items())


# libyaml's parser where PyYAML was built with it (its wheels are): ten times the pure-Python one.
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_SafeLoader):
    """Safe YAML that refuses a key given twice in one mapping (YAML's own rule, which PyYAML lets
    pass by keeping the last): a repeated quota must not silently win."""


def _mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen: dict = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice in one mapping", key_node.start_mark
            )
        seen[key] = loader.construct_object(value_node, deep=deep)
    return seen


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
_resolved: dict[tuple, str] = {}


def _resolve(self, kind, value, implicit):
    """A plain scalar's tag (int, bool, str, …) depends on its text alone (no path resolvers are
    registered): remembered, since a platform file repeats the same few thousand texts."""
    if kind is not yaml.ScalarNode:
        return _SafeLoader.resolve(self, kind, value, implicit)
    key = (value, implicit)
    tag = _resolved.get(key)
    if tag is None:
        tag = _SafeLoader.resolve(self, kind, value, implicit)
        if len(_resolved) < 100_000:
            _resolved[key] = tag
    return tag


_Loader.resolve = _resolve
# Dates stay text here: the schema reads them, and says where one is wrong (2026-13-01).
_Loader.add_constructor("tag:yaml.org,2002:timestamp", _SafeLoader.construct_scalar)


def parse_yaml(text: str, label: str = "") -> Any:
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise Invalid([Problem(_join(label, where), f"Not valid YAML: {problem}.")]) from None


def path_of(loc: tuple) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _join(prefix: str, path: str) -> str:
    return f"{prefix}: {path}" if prefix and path else prefix or path


def validate_document(data: Any, label: str = "") -> PlatformFile:
    """One file's content as a PlatformFile, or Invalid with every structural problem."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise Invalid([Problem(label, "A platform file is a mapping (gpu_types:, clusters:, tenants:, …).")])
    try:
        return PlatformFile.model_validate(data)
    except pydantic.ValidationError as exc:
        raise Invalid([_problem(error, label) for error in exc.errors()]) from None


def _problem(error: dict, label: str) -> Problem:
    loc = tuple(part for part in error["loc"] if not _is_union_tag(part))
    kind = error["type"]
    if kind == "extra_forbidden":
        message = "Unknown key."
    elif kind == "missing":
        message = "Required."
    elif kind == "value_error":
        message = str(error["ctx"]["error"])
    else:
        message = error["msg"] + "."
    return Problem(_join(label, path_of(loc)), message)


def _is_union_tag(part) -> bool:
    # pydantic names the branch of a union it tried ("function-before[…]"): not part of the file.
    return isinstance(part, str) and "[" in part


def load(path: str | Path) -> Declaration:
    """A platform file or a directory of them, as one declaration."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
        if not files:
            raise Invalid([Problem(str(path), "No *.yaml or *.yml files in this directory.")])
        texts = [(p.name, p.read_text()) for p in files]
    else:
        try:
            texts = [("", path.read_text())]
        except OSError as exc:
            raise Invalid([Problem(str(path), f"Cannot read it: {exc.strerror}.")]) from None
    declaration = from_texts(texts)
    declaration.source = str(path)
    return declaration


def from_texts(texts: list[tuple[str, str]]) -> Declaration:
    """Files' texts (label, text) as one declaration; every file's problems are listed together."""
    problems: list[Problem] = []
    documents = []
    for label, text in texts:
        try:
            documents.append((label, validate_document(parse_yaml(text, label), label)))
        except Invalid as exc:
            problems += exc.problems
    if problems:
        raise Invalid(problems)
    digest = hashlib.sha256()
    for label, text in texts:
        digest.update(f"{label}\0{text}\0".encode())
    return merge(documents, digest.hexdigest())


def from_data(data: Any) -> Declaration:
    """An already parsed document (a JSON request body) as a declaration."""
    document = validate_document(data)
    return merge([("", document)], hashlib.sha256(document.model_dump_json().encode()).hexdigest())


def merge(documents: list[tuple[str, PlatformFile]], digest: str) -> Declaration:
    declaration = Declaration(digest=digest)
    for label, document in documents:
        declaration.prune = declaration.prune or document.prune
        for section in SECTIONS:
            for index, item in enumerate(getattr(document, section)):
                declaration.items[section].append((_join(label, f"{section}[{index}]"), item))
    return declaration
