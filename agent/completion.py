"""Shell completion for bash and zsh, offered the way Hydra apps offer it:

    eval "$(cluster-agent --shell-completion install=bash)"   # in ~/.bashrc
    eval "$(cluster-agent --shell-completion install=zsh)"    # in ~/.zshrc

The installed function asks `cluster-agent --shell-completion query=bash -- WORD` for the
candidates of the word being typed: flags, top-level keys (`site=`, `experiment=`), dotted
keys of the schema (`site.hf_cache=`), a group's options over the whole search path
(`site=` + profiles of ~/.config/cluster-agent too), enum and boolean values, and file
paths for `experiment=` (folders and *.yaml). No Hydra import: it must answer at once.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import sys
import typing
from enum import Enum
from typing import Any, List, TextIO

from agent.errors import ConfigError

FLAGS = ["--help", "--version", "--info", "--cfg", "-m", "--multirun", "--config-dir", "-cd", "--shell-completion"]
_PATH_KEYS = ("experiment", "manifest", "log_file", "site.state_dir", "site.hf_cache", "site.xdg_cache_home",
              "launcher.folder", "conditions.dir")

BASH = r"""# cluster-agent completion (bash); eval "$(cluster-agent --shell-completion install=bash)"
_cluster_agent_complete() {
    local line="${COMP_LINE:0:$COMP_POINT}"
    local cur="${line##*[[:space:]]}"
    local IFS=$'\n'
    COMPREPLY=($(cluster-agent --shell-completion query=bash -- "$cur" 2>/dev/null))
    # bash splits words at = and : (COMP_WORDBREAKS): offer only what follows the last one
    if [[ "$cur" == *[=:]* && "$COMP_WORDBREAKS" == *[=:]* ]]; then
        local typed="${cur%"${cur##*[=:]}"}"
        COMPREPLY=("${COMPREPLY[@]#"$typed"}")
    fi
}
complete -o nospace -o filenames -F _cluster_agent_complete cluster-agent
"""

ZSH = r"""# cluster-agent completion (zsh); eval "$(cluster-agent --shell-completion install=zsh)"
autoload -U +X compinit && compinit
autoload -U +X bashcompinit && bashcompinit
""" + BASH


def _keys(cls: Any, prefix: str = "") -> List[tuple]:
    """(dotted key, type) for every leaf and node of the schema."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        name = f"{prefix}{f.name}"
        out.append((name, kind))
        if dataclasses.is_dataclass(kind):
            out += _keys(kind, name + ".")
    return out


def _values(kind: Any) -> List[str]:
    if typing.get_origin(kind) is typing.Union:
        inner = [a for a in typing.get_args(kind) if a is not type(None)]
        return _values(inner[0]) + ["null"] if len(inner) == 1 else []
    if isinstance(kind, type) and issubclass(kind, Enum):
        return list(kind.__members__)
    if kind is bool:
        return ["true", "false"]
    return []


def _paths(partial: str) -> List[str]:
    """Folders (with a trailing /) and YAML files starting with `partial` (~ kept as typed)."""
    expanded = os.path.expanduser(partial)
    out = []
    for match in sorted(glob.glob(glob.escape(expanded) + "*")):
        shown = partial + match[len(expanded):]
        if os.path.isdir(match):
            out.append(shown + "/")
        elif match.endswith((".yaml", ".yml", ".json")):
            out.append(shown)
    return out


def candidates(word: str) -> List[str]:
    from agent import searchpath
    from agent.config import AgentConfig, GROUPS

    keys = _keys(AgentConfig)
    if word.startswith("-"):
        return [f for f in FLAGS if f.startswith(word)]
    if "=" in word:
        key, _, partial = word.partition("=")
        bare = key.lstrip("+~")
        if bare in GROUPS:
            values = list(searchpath.options(bare))
        elif bare in _PATH_KEYS:
            return [f"{key}={p}" for p in _paths(partial)]
        else:
            values = _values(dict(keys).get(bare))
        return [f"{key}={v}" for v in values if v.startswith(partial)]
    out = []
    for name, kind in keys:
        if not name.startswith(word):
            continue
        if "." in name[len(word):].rstrip("."):  # deeper keys come when their parent is typed
            continue
        if typing.get_origin(kind) is dict:  # an open mapping: entries are added with +
            out.append(f"+{name}.")
            continue
        out.append(name + ("." if dataclasses.is_dataclass(kind) and name not in GROUPS else "="))
        if name in GROUPS:
            out.append(name + ".")
    return sorted(set(out))


def main(spec: str, words: List[str], stdout: TextIO = sys.stdout) -> int:
    kind, _, shell = spec.partition("=")
    if kind == "install" and shell in ("bash", "zsh"):
        stdout.write(BASH if shell == "bash" else ZSH)
        return 0
    if kind == "query" and shell in ("bash", "zsh"):
        word = words[-1] if words else ""
        stdout.write("".join(c + "\n" for c in candidates(word)))
        return 0
    raise ConfigError(f"--shell-completion {spec}: use install=bash or install=zsh, e.g. "
                      'eval "$(cluster-agent --shell-completion install=bash)"')
