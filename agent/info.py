"""`cluster-agent --info`: the config search path, every group's chosen option, and where
each came from (the file Hydra loaded, and who chose it)."""

from __future__ import annotations

import sys
from typing import List, TextIO

from agent import searchpath
from agent.searchpath import GROUPS


def _chooser(group: str, overrides: List[str]) -> str:
    for item in reversed(overrides):
        if item.split("=", 1)[0].lstrip("+") == group:
            return "the command line"
    path = searchpath.defaults_file()
    if path is not None:
        import yaml

        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            doc = {}
        for entry in doc.get("defaults") or [] if isinstance(doc, dict) else []:
            if isinstance(entry, dict) and any(k.split()[-1].strip("/") == group for k in entry):
                return f"the defaults file {path}"
    return "the default in config.yaml"


def main(overrides: List[str], stdout: TextIO = sys.stdout) -> int:
    from agent import config

    composed = config.compose_config(overrides, with_hydra=True)
    choices = dict(composed.hydra.runtime.choices)
    out = ["Config search path (highest priority first; a file shadows the same name below it):"]
    locs = searchpath.locations()
    present = {loc.path for loc in locs}
    user = searchpath.user_folder()
    rows = [(loc.label, str(loc.path), "") for loc in locs]
    if user not in present:  # where a personal folder would go
        at = 1 if searchpath.config_dir() else 0
        rows.insert(at, ("user config ($XDG_CONFIG_HOME/cluster-agent)", str(user), "   (not present)"))
    if not any(loc.label == searchpath.ENV_PATH for loc in locs):
        at = [r[0] for r in rows].index("shipped")
        rows.insert(at, (searchpath.ENV_PATH, "(unset: colon-separated folders, e.g. /etc/cluster-agent)", ""))
    for label, path, state in rows:
        out.append(f"  {label:<46} {path}{state}")
    defaults = searchpath.defaults_file()
    out.append(f"Defaults file: {defaults or 'none (' + searchpath.DEFAULTS_FILE + ' in any folder above)'}")
    out.append("Chosen options:")
    for group in GROUPS:
        option = choices.get(group)
        path = searchpath.where(group, option) if option else None
        out.append(f"  {group + '=' + str(option):<20} {path}  (chosen by {_chooser(group, overrides)})")
    out.append("Every option:")
    for group in GROUPS:
        listed = ", ".join(f"{name} [{loc.label}]" for name, loc in searchpath.options(group).items())
        out.append(f"  {group:<9} {listed}")
    stdout.write("\n".join(out) + "\n")
    return 0
