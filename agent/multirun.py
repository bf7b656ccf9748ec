"""`cluster-agent -m ...` (--multirun): one run per combination of Hydra sweep values.

The sweep grammar is Hydra's own: the override parser reads `a,b` lists, `range(1,4)`,
`glob(*)` (over a group's options on the search path) and `choice(...)`, and Hydra's
BasicSweeper.split_arguments makes the cartesian product, in Hydra's order. Each
combination then runs as a separate `cluster-agent` process -- the same command line a
user could type, so each one composes, logs, locks and writes its manifest exactly as a
single run does -- whatever its action (prebuild, plan or check).

Manifests: a combination that differs from the others in more than `experiment=` would
share its experiment's manifest with them, so (unless manifest= is given) it gets its own,
named like Hydra's override_dirname: `<state dir>/.cluster-agent/multirun/site=mylab/manifest.json`.
A later `cluster-agent -m action=check ...` with the same sweep finds the same files.

At the end: one recap line per run and the worst (highest) exit code; with output=json,
one JSON document `{"runs": [{"overrides", "exit", "result"}, ...], "exit": worst}`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any, Dict, List, TextIO

from agent.errors import ConfigError


def combinations(overrides: List[str]) -> List[List[str]]:
    """Every run's override list, expanded by Hydra's parser and BasicSweeper."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from agent import config

    quoted = config._quote_plain_values(overrides)
    try:
        with config.hydra_context() as loader:
            parsed = OverridesParser.create(config_loader=loader).parse_overrides(quoted)
            batches = BasicSweeper.split_arguments(parsed, None)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(f"-m {' '.join(overrides)}: {config._one_line(exc)}") from None
    # glob() lists a group's options from Hydra's repository, which also holds our schema
    # nodes (site_schema, ...: ConfigStore entries, not profiles); they are not options
    groups = set(config.GROUPS)
    return [list(job) for batch in batches for job in batch
            if not any(o.split("=", 1)[0] in groups and o.endswith("_schema") for o in job)]


def _dirname(job: List[str], varying: List[str]) -> str:
    """Hydra's override_dirname for the keys that vary (experiment excluded), sorted."""
    parts = [o for o in sorted(job) if o.split("=", 1)[0] in varying]
    return "_".join(p.replace("/", "_") for p in parts)


def main(flags: Any, argv: List[str], stdout: TextIO = sys.stdout) -> int:
    from agent import searchpath
    from agent.cli import wants_json

    as_json = wants_json(flags.overrides)
    if any(o == "output=shell" for o in flags.overrides):
        raise ConfigError("output=shell with -m: the export lines of several runs cannot be eval'ed together; "
                          "use output=text or output=json")
    if flags.show_cfg or flags.info:
        raise ConfigError("-m with --cfg/--info: run them without -m, on one combination")
    jobs = combinations(flags.overrides)
    values: Dict[str, set] = {}
    for job in jobs:
        for o in job:
            key, _, value = o.partition("=")
            values.setdefault(key, set()).add(value)
    varying = sorted(k for k, v in values.items() if len(v) > 1 and k != "experiment")
    own_manifest = bool(varying) and "manifest" not in values
    prefix = [sys.executable, "-m", "agent"]
    if searchpath.config_dir():
        prefix += ["--config-dir", searchpath.config_dir() or ""]
    runs = []
    worst = 0
    for i, job in enumerate(jobs, 1):
        args = list(job)
        if own_manifest:
            args.append(f"manifest=.cluster-agent/multirun/{_dirname(job, varying)}/manifest.json")
        proc = subprocess.run(prefix + args, stdout=subprocess.PIPE, text=True)
        worst = max(worst, proc.returncode)
        out = proc.stdout
        result = None
        if as_json:
            try:
                result = json.loads(out) if out.strip() else None
            except ValueError:
                result = {"stdout": out}
        else:
            stdout.write(out)
            stdout.flush()
        last = out.strip().splitlines()[-1] if out.strip() and not as_json else ""
        runs.append({"overrides": job, "exit": proc.returncode, "result": result, "last": last})
    if as_json:
        stdout.write(json.dumps({"runs": [{k: r[k] for k in ("overrides", "exit", "result")} for r in runs],
                                 "exit": worst}) + "\n")
        return worst
    stdout.write(f"multirun: {len(runs)} run(s), worst exit {worst}\n")
    for i, r in enumerate(runs, 1):
        tail = f": {r['last']}" if r["last"] else ""
        stdout.write(f"  [{i}/{len(runs)}] exit {r['exit']}  {' '.join(r['overrides'])}{tail}\n")
    return worst
