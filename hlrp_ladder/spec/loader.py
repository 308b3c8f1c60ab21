"""Reading a spec file: YAML (1.1, without base-60 numbers) into a :class:`Spec`, every error one line
``file:line: key: why``.

Whatever the file holds, reading it stays small: a file over ``MAX_SPEC_BYTES`` is refused unread, YAML nested
deeper than Python's stack is refused, and aliases may expand to at most ``MAX_NODES`` values (counted on the
composed graph, where an alias is a shared node, before anything walks the expanded document: nine levels of
``&a [*a, *a, ...]`` in 2 KiB expand to billions).
"""
from __future__ import annotations

import difflib
import os
import re
import typing
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

from hlrp_ladder.spec.model import Spec


MAX_SPEC_BYTES = 1 << 20    # a spec is a page of YAML; a larger file is a mistake (a log, a dataset)
MAX_NODES = 100_000         # values in the document with every alias expanded


class SpecError(ValueError):
    """A mistake in a spec file; ``str()`` is the one line to show."""


class _Loader(yaml.SafeLoader):
    """YAML 1.1 without base-60 numbers: ``time: 1:30:00`` is the string a SLURM user means, not 5400."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?"
               r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def load_yaml(text: str):
    """YAML as a spec is read (no base-60 numbers)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def _line_map(node: yaml.Node, path: tuple = (), out: dict | None = None) -> dict[tuple, int]:
    """YAML path -> 1-based line of its value (and of the key, under the path + ('<key>',))."""
    out = {} if out is None else out
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            out[path + (key, "<key>")] = key_node.start_mark.line + 1
            _line_map(value_node, path + (key,), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_map(item, path + (i,), out)
    return out


def _locate(loc: tuple, lines: dict[tuple, int], key_line: bool) -> int:
    path: tuple = ()
    for part in loc:
        if path + (part,) in lines:
            path = path + (part,)
    if key_line and path + ("<key>",) in lines:
        return lines[path + ("<key>",)]
    return lines.get(path, 1)


def _model_at(loc: tuple):
    """The pydantic model a key path leads to inside a Spec (None where it leaves the models)."""
    model = Spec
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return None
        candidates = [field.annotation, *typing.get_args(field.annotation)]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return None
    return model


def _message(err: dict) -> str:
    msg = err["msg"]
    if msg.startswith("Value error, "):
        return msg[len("Value error, "):]
    if err["type"] == "extra_forbidden":
        model = _model_at(tuple(err["loc"][:-1]))
        close = difflib.get_close_matches(str(err["loc"][-1]), list(model.model_fields), n=1, cutoff=0.6) \
            if model is not None else []
        return f"unknown key; did you mean {close[0]!r}?" if close else "unknown key"
    if err["type"] == "missing":
        return "required key is missing"
    shown = repr(err.get("input"))
    return f"{msg} (got {shown if len(shown) <= 80 else shown[:77] + '...'})"


def _loc_text(loc: tuple) -> str:
    return ".".join(str(p) for p in loc if not (isinstance(p, str) and ("[" in p or p.startswith("function-"))))


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def _expanded_size(root: yaml.Node) -> int:
    """How many values the document has with every alias expanded, counted without expanding (each node once,
    its size memoised; iterative, so a deep document cannot exhaust the stack). Stops counting past
    ``MAX_NODES``; an alias inside its own anchor (``&a [8, *a]``, which expands forever) counts as past it."""
    size: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            size[key] = min(MAX_NODES + 1, 1 + sum(size[id(child)] for child in _children(node)))
            continue
        if key in size:
            continue
        on_path.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in on_path:
                return MAX_NODES + 1
            if id(child) not in size:
                stack.append((child, False))
    return size[id(root)]


def _first_alias_line(text: str) -> int:
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.AliasEvent):
            return event.start_mark.line + 1
    return 1


def parse_spec(text: str, source: str) -> Spec:
    """Validate a spec from YAML text; ``source`` names it in errors."""
    try:
        node = yaml.compose(text, Loader=_Loader)
        if node is not None and _expanded_size(node) > MAX_NODES:
            raise SpecError(f"{source}:{_first_alias_line(text)}: its YAML aliases expand to more than "
                            f"{MAX_NODES:,} values (or into themselves); write the values out instead")
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(f"{source}{line}: not valid YAML: {problem}") from None
    except RecursionError:
        raise SpecError(f"{source}: not valid YAML for a spec: nested too deeply") from None
    if not isinstance(data, dict):
        raise SpecError(f"{source}:1: a spec is a mapping of keys (name, batch_sizes, ...)")
    try:
        return Spec.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        lines = _line_map(node)
        line = _locate(err["loc"], lines, key_line=err["type"] in ("extra_forbidden", "missing"))
        key = _loc_text(err["loc"]) or "spec"
        raise SpecError(f"{source}:{line}: {key}: {_message(err)}") from None
    except RecursionError:
        raise SpecError(f"{source}: nested too deeply for a spec") from None


def load_spec(path: str | os.PathLike) -> Spec:
    """The spec in a file: read only if it is at most ``MAX_SPEC_BYTES`` (a FIFO or a device too: never more
    than that is read), UTF-8, and valid; else one line naming the file."""
    p = Path(path)
    try:
        with open(p, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            data = handle.read(MAX_SPEC_BYTES + 1) if size <= MAX_SPEC_BYTES else b""
    except FileNotFoundError:
        raise SpecError(f"{p}: no such file") from None
    except OSError as exc:
        raise SpecError(f"{p}: cannot read ({exc.strerror})") from None
    if size > MAX_SPEC_BYTES or len(data) > MAX_SPEC_BYTES:
        what = f"{size / 2**20:.1f} MiB" if size > MAX_SPEC_BYTES else "more than 1 MiB"
        raise SpecError(f"{p}: {what}, over the 1 MiB a spec may be (is this the spec?)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{p}: not UTF-8 text (byte {exc.start})") from None
    return parse_spec(text, str(p))
