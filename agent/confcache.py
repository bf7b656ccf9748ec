"""A memo of composed configs, so that a run whose config did not change skips Hydra.

Importing Hydra and composing ``conf/`` costs about 0.5 s -- more than everything else
an unchanged re-run does (benchmarks in docs/benchmarks.md). Hydra stays the config
system: the first run with a given command line composes and validates with Hydra as
usual, and the typed result is stored as JSON. A later run with the same command line
reuses it while everything the result depended on is the same:

- the override list, this package's version and the schema module (agent/config.py),
- every file under the conf/ folder (names and contents -- so a new
  ``conf/user/default.yaml`` or an edited profile misses; they are a few small files),
- the installed Hydra and OmegaConf (their package files' stat),
- the values of the environment variables the config reads with ``${oc.env:...}``.

- every folder of the config search path (agent.searchpath) and the files it supplies.

A config with any other resolver (``${now:...}`` and the like) is never stored. Set
``CLUSTER_AGENT_CONFIG_CACHE=0`` to always compose. It is a pure speed-up: an unreadable,
corrupt or unwritable memo means composing again, never an error.

Where: ``CLUSTER_AGENT_CONFIG_MEMO`` if set (tests point it into a temporary folder), else
platformdirs' user cache folder for cluster-agent (``~/.cache/cluster-agent/config`` on
Linux) -- deliberately *not* under ``$XDG_CACHE_HOME``: that variable is a cache root
cluster-agent builds (inspect-ai's layer lives under it), and a fresh cache root must not
cost a fresh Hydra compose.

A new command line that differs from a stored one only in plain values of top-level keys
(``experiment=``, ``task=``, ``action=``, ``jobs=``, ...; see ``split_plain``) reuses that
entry and sets those values on the typed result: its first run costs no compose either.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import typing
from dataclasses import fields, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Dict, List, Optional

_ENV_REF = re.compile(r"\$\{oc\.env:([A-Za-z_][A-Za-z0-9_]*)")
_RESOLVER = re.compile(r"\$\{\s*([A-Za-z_][\w.]*)\s*:")
_KEEP = 200  # memo files kept; the oldest half goes when there are more


def enabled() -> bool:
    return os.environ.get("CLUSTER_AGENT_CONFIG_CACHE", "1").lower() not in ("0", "false", "no", "off")


MEMO_ENV = "CLUSTER_AGENT_CONFIG_MEMO"


def folder() -> Path:
    override = os.environ.get(MEMO_ENV)
    if override:
        return Path(os.path.abspath(os.path.expanduser(override)))
    if sys.platform.startswith(("linux", "freebsd", "openbsd", "netbsd")):
        # platformdirs follows $XDG_CACHE_HOME here, and that is a cache root we build (see
        # above); without it, its user_cache_dir is ~/.cache/<app>. Written out rather than
        # imported: platformdirs.unix imports configparser, 11 ms of every new command line.
        base = os.path.join(os.path.expanduser("~/.cache"), "cluster-agent")
    else:
        import platformdirs

        base = platformdirs.user_cache_dir("cluster-agent", appauthor=False)
    return Path(base) / "config"


def _stat(path: str) -> List[int]:
    try:
        st = os.stat(path)
    except OSError:
        return [0, 0, 0, 0]
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _package_file(name: str) -> str:
    """The package's __init__.py without importing it (find_spec of a top-level name)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return ""
    return (spec.origin or "") if spec else ""


def _content(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()
    except OSError:
        return ""


def key(overrides: List[str], conf_dir: Path, schema_file: str, version: str,
        search: Optional[List[List[str]]] = None) -> str:
    conf = []
    for root, dirs, files in os.walk(conf_dir):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            conf.append([os.path.relpath(path, conf_dir), _content(path)])
    raw = json.dumps([version, sys.version, list(overrides), str(conf_dir), conf, search or [], _content(schema_file),
                      [_stat(_package_file(p)) for p in ("hydra", "omegaconf")]])
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


# --- the typed config <-> JSON ----------------------------------------------------------


def to_plain(obj: Any) -> Any:
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, Enum):
        return obj.name
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


def from_plain(cls: Any, data: Any) -> Any:
    """Rebuild a dataclass tree from `to_plain` output, following the type hints."""
    origin = typing.get_origin(cls)
    if data is None:
        return None
    if origin is typing.Union:
        (inner,) = [a for a in typing.get_args(cls) if a is not type(None)]
        return from_plain(inner, data)
    if is_dataclass(cls):
        hints = typing.get_type_hints(cls)
        return cls(**{f.name: from_plain(hints[f.name], data[f.name]) for f in fields(cls)})
    if isinstance(cls, type) and issubclass(cls, Enum):
        return cls[data]
    if origin is list:
        (inner,) = typing.get_args(cls) or (Any,)
        return [from_plain(inner, v) for v in data]
    if origin is dict:
        _, inner = typing.get_args(cls) or (Any, Any)
        return {k: from_plain(inner, v) for k, v in data.items()}
    if cls is float and isinstance(data, int):
        return float(data)
    return data


def _strings(node: Any):
    if isinstance(node, dict):
        for v in node.values():
            yield from _strings(v)
    elif isinstance(node, (list, tuple)):
        for v in node:
            yield from _strings(v)
    elif isinstance(node, str):
        yield node


def env_dependencies(raw: Any) -> Optional[List[str]]:
    """Names of the env vars the unresolved config reads; None if it uses another resolver
    (whose value the memo could not check)."""
    names = set()
    for text in _strings(raw):
        if "${" not in text:
            continue
        if any(r != "oc.env" for r in _RESOLVER.findall(text)):
            return None
        names.update(_ENV_REF.findall(text))
    return sorted(names)


# --- get / put --------------------------------------------------------------------------


def get(cache_key: str, cls: Any, plain: bool = False) -> Optional[Any]:
    """The stored config; with `plain`, only one stored as safe for plain values (apply_plain)."""
    path = folder() / f"{cache_key}.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if any(os.environ.get(k) != v for k, v in doc["env"].items()):
            return None
        if plain and not doc.get("plain_safe"):
            return None
        return from_plain(cls, doc["config"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def put(cache_key: str, typed: Any, raw_unresolved: Any, is_plain_safe: bool = False) -> None:
    deps = env_dependencies(raw_unresolved)
    if deps is None:
        return
    plain = to_plain(typed)
    try:
        if from_plain(type(typed), json.loads(json.dumps(plain))) != typed:
            return  # something the JSON form cannot carry: never serve a different config
        target = folder()
        target.mkdir(parents=True, exist_ok=True)
        tmp = target / f".{cache_key}.tmp-{os.getpid()}"
        tmp.write_text(json.dumps({"env": {k: os.environ.get(k) for k in deps}, "plain_safe": is_plain_safe,
                                   "config": plain}), encoding="utf-8")
        os.replace(tmp, target / f"{cache_key}.json")
        _prune(target)
    except (OSError, TypeError, ValueError, KeyError):
        return


def _prune(target: Path) -> None:
    entries = list(os.scandir(target))
    if len(entries) <= _KEEP:
        return
    entries.sort(key=lambda e: e.stat().st_mtime_ns)
    for entry in entries[: len(entries) // 2]:
        try:
            os.unlink(entry.path)
        except OSError:
            pass


# --- plain top-level values, set without Hydra ------------------------------------------

_SAFE_STRING = re.compile(r"[A-Za-z0-9_./@%+~-]+")
_NUMBERISH = re.compile(r"[+-]?[\d_]*\.?[\d_]*([eE][+-]?\d+)?")
_WORDS = {"true", "false", "null", "none", "inf", "nan", "yes", "no", "on", "off"}


def _plain_value(kind: Any, value: str) -> Any:
    """The value Hydra + OmegaConf would give `value` for a field of type `kind`, or a
    `_NotPlain` marker when only Hydra can say (lists, quotes, interpolations, null, ...)."""
    if typing.get_origin(kind) is typing.Union:
        inner = [a for a in typing.get_args(kind) if a is not type(None)]
        kind = inner[0] if len(inner) == 1 else None
    if kind is str:
        if _SAFE_STRING.fullmatch(value) and not _NUMBERISH.fullmatch(value) and value.lower() not in _WORDS:
            return value
    elif kind is bool:
        if value in ("true", "false"):
            return value == "true"
    elif kind is int:
        if re.fullmatch(r"0|[1-9][0-9]{0,8}", value):
            return int(value)
    elif kind is float:
        # Hydra parses 900 as an int and 0.5 as a float; OmegaConf stores either as float
        if re.fullmatch(r"(0|[1-9][0-9]{0,8})(\.[0-9]{1,9})?", value):
            return float(value)
    elif isinstance(kind, type) and issubclass(kind, Enum):
        if value in kind.__members__:
            return kind[value]
    return _NOT_PLAIN


_NOT_PLAIN = object()
_OPTION = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # a config group's option name


def _field_kind(cls: Any, dotted: str) -> Any:
    """The schema type of a dotted key (`jobs`, `site.hf_cache`), or None: not a key of a
    dataclass all the way down (a Dict entry such as site.env.X is Hydra's to add)."""
    node = cls
    kind = None
    for part in dotted.split("."):
        if not is_dataclass(node):
            return None
        hints = typing.get_type_hints(node)
        if part not in hints:
            return None
        node = kind = hints[part]
    return kind


def split_plain(overrides: List[str], cls: Any) -> tuple:
    """(the other overrides, {dotted key: value}) where each plain override sets a scalar
    key of the schema (`experiment=/a/b.yaml`, `jobs=2`, `site.hf_cache=/scratch/hf`,
    `policy.non_interactive=continue`) to a value whose meaning needs no Hydra. Hydra
    applies such an override after composing the defaults, whatever else the command line
    chose, so setting it on the composed result is the same (see plain_safe for the one
    exception). The last of repeated keys wins, as in Hydra; a key that is also given in
    another form, or a parent or child of it, leaves the whole command line to Hydra."""
    shape: List[str] = []
    plain: Dict[str, Any] = {}
    for item in overrides:
        name, sep, value = item.partition("=")
        kind = _field_kind(cls, name) if sep and name and not name.startswith(("+", "~")) else None
        value_ = _plain_value(kind, value) if kind is not None else _NOT_PLAIN
        if value_ is _NOT_PLAIN:
            shape.append(item)
        else:
            plain[name] = value_
    for item in shape:
        raw, _, value = item.partition("=")
        key = raw.lstrip("+~")
        # `site=della` chooses a profile (the defaults list), composed before any value is set
        choice = raw == key and "." not in key and is_dataclass(_field_kind(cls, key)) and _OPTION.fullmatch(value)
        if any(key == k or key.startswith(k + ".") or (k.startswith(key + ".") and not choice) for k in plain):
            return list(overrides), {}
    return shape, plain


def plain_safe(raw_unresolved: Any) -> bool:
    """No interpolation except ${oc.env:...}: setting a value after composing gives what
    composing with it would (nothing else can refer to it)."""
    return all("${" not in text or not re.search(r"\$\{(?!\s*oc\.env:)", text) for text in _strings(raw_unresolved))


def apply_plain(typed: Any, plain: Dict[str, Any]) -> Any:
    """`typed` with each dotted key set (a copy: the memo's object is left alone)."""
    import dataclasses

    if not plain:
        return typed
    nested: Dict[str, Dict[str, Any]] = {}
    top: Dict[str, Any] = {}
    for key, value in plain.items():
        head, _, rest = key.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            top[head] = value
    for head, inner in nested.items():
        top[head] = apply_plain(getattr(typed, head), inner)
    return dataclasses.replace(typed, **top)
