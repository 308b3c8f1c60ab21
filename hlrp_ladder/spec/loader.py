"""Reading a spec file: YAML (1.1, without base-60 numbers) into a :class:`Spec`, every error one line
``file:line: key: why``."""
from __future__ import annotations

import os
import re
from pathlib import Path

import yaml
from pydantic import ValidationError

from hlrp_ladder.spec.model import Spec


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


def _message(err: dict) -> str:
    msg = err["msg"]
    if msg.startswith("Value error, "):
        return msg[len("Value error, "):]
    if err["type"] == "extra_forbidden":
        return "unknown key"
    if err["type"] == "missing":
        return "required key is missing"
    return f"{msg} (got {err.get('input')!r})"


def _loc_text(loc: tuple) -> str:
    return ".".join(str(p) for p in loc if not (isinstance(p, str) and ("[" in p or p.startswith("function-"))))


def parse_spec(text: str, source: str) -> Spec:
    """Validate a spec from YAML text; ``source`` names it in errors."""
    try:
        node = yaml.compose(text, Loader=_Loader)
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(f"{source}{line}: not valid YAML: {problem}") from None
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


def load_spec(path: str | os.PathLike) -> Spec:
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise SpecError(f"{p}: no such file") from None
    except OSError as exc:
        raise SpecError(f"{p}: cannot read ({exc.strerror})") from None
    return parse_spec(text, str(p))
