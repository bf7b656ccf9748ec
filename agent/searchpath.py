"""Where config groups are looked up: the search path (standard library only: the gate imports it).

Lowest to highest priority:

1. the shipped ``conf/`` (inside the package when installed),
2. each folder of ``CLUSTER_AGENT_CONFIG_PATH`` (colon-separated; as in ``PATH``, an
   earlier folder wins over a later one): a cluster-wide ``/etc/cluster-agent``, a lab's
   shared folder,
3. ``$XDG_CONFIG_HOME/cluster-agent`` (default ``~/.config/cluster-agent``),
4. ``--config-dir DIR`` / ``-cd DIR`` on the command line.

Each folder may hold ``site/``, ``policy/``, ``consumer/``, ``launcher/`` (one YAML file per
option) and ``user/default.yaml`` (a defaults file). Hydra composes them: ``hydra_search_path``
puts every folder on Hydra's ConfigSearchPath ahead of the shipped one, so a file in a
higher folder shadows the same name below it (Hydra's own first-match rule), and a
profile may extend a lower one through its defaults list (``defaults: [local, _self_]``).
Only the highest ``user/default.yaml`` is read, by the same rule. ``hydra.searchpath=[...]``
on the command line adds folders the way Hydra does: below all of these.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from agent.errors import ConfigError

ENV_PATH = "CLUSTER_AGENT_CONFIG_PATH"
GROUPS = ("site", "policy", "consumer", "launcher")
DEFAULTS_FILE = "user/default.yaml"

_config_dir: Optional[str] = None  # --config-dir / -cd, set once by the command line
_hydra_searchpath: List[str] = []  # folders from a hydra.searchpath=[...] override


@dataclass(frozen=True)
class Location:
    label: str  # where this folder comes from, as --info and error messages name it
    path: Path


def _shipped() -> Path:
    from agent.config import CONF_DIR  # stdlib-only module level

    return CONF_DIR


def user_folder() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "cluster-agent"


def set_config_dir(path: Optional[str]) -> None:
    """`--config-dir DIR`: must be an existing folder (a typo must not silently fall back)."""
    global _config_dir
    if path is None:
        _config_dir = None
        return
    full = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(full):
        raise ConfigError(f"--config-dir {path}: no such folder ({full}); give a folder holding site/, policy/, ...")
    _config_dir = full


def config_dir() -> Optional[str]:
    return _config_dir


def set_hydra_searchpath(entries: List[str]) -> None:
    global _hydra_searchpath
    _hydra_searchpath = list(entries)


def locations() -> List[Location]:
    """Every folder of the search path, highest priority first (Hydra's order)."""
    out: List[Location] = []
    if _config_dir is not None:
        out.append(Location("--config-dir", Path(_config_dir)))
    user = user_folder()
    if os.path.isdir(user):  # os.path: an unreadable parent (another user's HOME) is "absent"
        out.append(Location("user config ($XDG_CONFIG_HOME/cluster-agent)", user))
    for entry in filter(None, os.environ.get(ENV_PATH, "").split(os.pathsep)):
        folder = Path(os.path.abspath(os.path.expanduser(entry)))
        if os.path.isdir(folder) and all(folder != loc.path for loc in out):
            out.append(Location(ENV_PATH, folder))
    out.append(Location("shipped", _shipped()))
    for entry in _hydra_searchpath:
        folder = Path(entry[len("file://"):] if entry.startswith("file://") else entry)
        out.append(Location("hydra.searchpath", folder))
    return out


def extra_locations_exist() -> bool:
    """Anything beyond the shipped conf/ that could change the config (the gate's fast path
    then steps aside): a search-path folder or --config-dir. Asked without the shipped
    folder's path, which is agent.config's (the gate's fast path need not import it)."""
    if _config_dir is not None or _hydra_searchpath or os.path.isdir(user_folder()):
        return True
    return any(os.path.isdir(os.path.abspath(os.path.expanduser(e)))
               for e in filter(None, os.environ.get(ENV_PATH, "").split(os.pathsep)))


def options(group: str) -> Dict[str, Location]:
    """{option name: the folder it comes from} over the whole search path (highest wins)."""
    found: Dict[str, Location] = {}
    for loc in locations():
        folder = loc.path / group
        if os.path.isdir(folder):
            for path in sorted(folder.glob("*.yaml")):
                if not path.stem.endswith("_schema"):
                    found.setdefault(path.stem, loc)
    return dict(sorted(found.items()))


def where(group: str, option: str) -> Optional[Path]:
    """The file Hydra loads for group=option (the first match on the search path)."""
    for loc in locations():
        path = loc.path / group / f"{option}.yaml"
        if os.path.isfile(path):
            return path
    return None


def defaults_file() -> Optional[Path]:
    """The user/default.yaml Hydra reads (the highest one), or None. The shipped conf/ never
    supplies one: a checkout's git-ignored conf/user/default.yaml would reach every test and
    every user of a shared install; personal defaults live in ~/.config/cluster-agent."""
    for loc in locations():
        path = loc.path / DEFAULTS_FILE
        if os.path.isfile(path) and loc.label != "shipped":
            return path
    return None


def defaults_override() -> List[str]:
    """The override that adds the defaults file to the primary config's defaults list (after
    the groups, as `optional user: default` would), when a search-path folder has one."""
    return ["+user@_global_=default"] if defaults_file() is not None else []


def stale_checkout_file() -> Optional[Path]:
    path = _shipped() / DEFAULTS_FILE
    return path if os.path.isfile(path) else None


def check_folders() -> None:
    """A search-path folder holds groups and a defaults file, never its own primary config:
    a config.yaml there would replace the shipped one and silently drop the schema."""
    for loc in locations():
        if loc.label != "shipped" and os.path.isfile(loc.path / "config.yaml"):
            raise ConfigError(f"{loc.path / 'config.yaml'}: a search-path folder ({loc.label}) may hold site/, policy/, "
                              f"consumer/, launcher/ and {DEFAULTS_FILE}, not config.yaml; rename or remove it")


def memo_files() -> List[List[str]]:
    """What the config memo keys on: each folder's place and every YAML file it could supply."""
    out: List[List[str]] = []
    for loc in locations():
        out.append([loc.label, str(loc.path)])
        if loc.label == "shipped":
            continue  # confcache.key walks the shipped conf/ itself
        for root in [loc.path / g for g in (*GROUPS, "user")]:
            for dirpath, dirs, files in os.walk(root):
                dirs.sort()
                for name in sorted(files):
                    full = os.path.join(dirpath, name)
                    out.append([os.path.relpath(full, loc.path), _digest(full)])
    return out


def _digest(path: str) -> str:
    import hashlib

    try:
        with open(path, "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()
    except OSError:
        return ""


def hydra_search_path(primary: Path):  # -> ConfigSearchPath (imports Hydra)
    """Hydra's ConfigSearchPath for the compose API: the shipped conf/ as Hydra's primary
    ("main") folder, every higher folder ahead of it."""
    from hydra._internal.utils import create_config_search_path
    from hydra.core.config_search_path import SearchPathQuery

    csp = create_config_search_path(search_path_dir=str(primary))
    # each one just before "main", in priority order: the first inserted stays the highest
    for loc in [loc for loc in locations() if loc.label not in ("shipped", "hydra.searchpath")]:
        csp.prepend(provider=loc.label, path=f"file://{loc.path}", anchor=SearchPathQuery(provider="main"))
    return csp
