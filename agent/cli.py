"""The command line: `cluster-agent [key=value ...]` (a Hydra override grammar).

Thin on purpose: compose and validate the config, set up logging, call a plain function,
turn expected errors into one line and an exit code (DESIGN §7).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from dataclasses import dataclass
from typing import List, Optional

from agent.errors import AgentError

EXAMPLES = """\
  cluster-agent                                   # the bundled example, local site, ask on failure
  cluster-agent experiment=~/sweeps/exp1/experiment_summary.yaml site=della policy=stop
  cluster-agent experiment=exp1/experiment_summary.yaml action=check task=capitalization output=json
"""


def help_text() -> str:
    from agent.config import GROUPS, group_options

    groups = "\n".join(f"  {g:<9} {', '.join(group_options(g))}" for g in GROUPS)
    return f"""\
cluster-agent: pre-build every dataset cache an eval sweep reads, write a manifest,
and gate the SLURM launch on it, so any number of jobs can start at the same instant.

Usage: cluster-agent [key=value ...] [-m] [-cd DIR] [--cfg job] [--info] [--help]

Config groups (choose one with group=option; every option on the search path):
{groups}

Search path, highest first: --config-dir/-cd DIR, ~/.config/cluster-agent ($XDG_CONFIG_HOME),
the folders in $CLUSTER_AGENT_CONFIG_PATH, the shipped conf/. Each may hold site/, policy/,
consumer/, launcher/ and user/default.yaml. `cluster-agent --info` shows what is used.

Keys (override any of them, e.g. site.hf_cache=/scratch/hf):
  experiment=PATH        experiment summary (default: the bundled example)
  action=prebuild|plan|check
                         prebuild builds; plan lists what prebuild would do and writes
                         nothing; check is the launch gate (fast, exit 3 if not ready)
  output=text|json|shell json: exactly one JSON document on stdout, logs on stderr;
                         shell (with check): `export VAR=value` lines for the job
  task=NAME              narrow plan/check to one task
  entry=N                narrow plan/prebuild to the N-th dataset (0-based; pre-build arrays use it)
  launcher=slurm         submit the pre-build as a SLURM job; prints the job id to chain on
  jobs=N                 build N datasets at once (separate processes)
  manifest=PATH          default <summary folder>/.cluster-agent/manifest.json
  log_file=PATH          default <summary folder>/logs/cluster-agent.log
  verify=false           skip re-loading each built dataset with the real consumer
  force=true             rebuild everything
  verbose=true           debug logs, tracebacks for errors
  policy.non_interactive=continue|stop   what policy=ask does without a terminal

Examples:
{EXAMPLES}
Show the resolved config: cluster-agent [overrides] --cfg job
Sweep with Hydra's grammar, one run each: cluster-agent -m experiment=a.yaml,b.yaml site=local,della
Shell completion: eval "$(cluster-agent --shell-completion install=bash)"   (or install=zsh)

Exit codes: 0 proceed, 1 stop (failure under policy=stop, a "no" to ask, ask without
a terminal), 2 usage or config error, 3 the launch gate refused.
"""


@dataclass
class Flags:
    overrides: List[str]
    show_cfg: bool = False
    multirun: bool = False
    info: bool = False
    config_dir: Optional[str] = None
    completion: Optional[str] = None  # install=bash|zsh, query=bash


def _split_flags(argv: List[str]) -> Flags:
    flags = Flags([])
    it = iter(argv)
    for arg in it:
        if arg in ("--cfg", "-c") or arg.startswith("--cfg="):
            nxt = arg.split("=", 1)[1] if "=" in arg else next(it, "job")
            if nxt != "job":
                raise AgentError(f"--cfg {nxt}: cluster-agent composes with Hydra's compose API and has no Hydra "
                                 "job config (hydra.*) to print; use --cfg job (the resolved config) or --info")
            flags.show_cfg = True
        elif arg in ("-m", "--multirun"):
            flags.multirun = True
        elif arg == "--info" or arg.startswith("--info="):
            flags.info = True
        elif arg in ("--config-dir", "-cd") or arg.startswith("--config-dir="):
            value = arg.split("=", 1)[1] if "=" in arg else next(it, None)
            if not value:
                raise AgentError(f"{arg}: give a folder, e.g. {arg} ~/lab-conf")
            flags.config_dir = value
        elif arg in ("--shell-completion", "-sc"):
            flags.completion = next(it, "")
            flags.overrides = [w for w in it if w != "--"]  # the words being completed
            break
        elif arg.startswith("-"):
            raise AgentError(f"unknown option {arg}; see cluster-agent --help")
        else:
            flags.overrides.append(arg)
    return flags


def wants_json(argv: List[str]) -> bool:
    """output=json on the command line (the last output= wins, as in Hydra)."""
    values = [a.split("=", 1)[1] for a in argv if a.startswith("output=")]
    return bool(values) and values[-1] == "json"


def _summary_folder(argv: List[str]) -> List[str]:
    """experiment=<folder holding experiment_summary.yaml> means that file, in every action
    (the gate's fast path included); a folder without one is refused the same way everywhere."""
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if key == "experiment" and sep and value and "," not in value and not value.startswith(("'", '"', "${")):
            full = os.path.abspath(os.path.expandvars(os.path.expanduser(value)))
            if os.path.isdir(full):
                summary = os.path.join(full, "experiment_summary.yaml")
                if not os.path.isfile(summary):
                    raise AgentError(f"experiment={value}: a folder without experiment_summary.yaml; give the summary "
                                     "file (experiment=PATH/TO/experiment_summary.yaml) or its folder")
                arg = f"experiment={summary}"
        out.append(arg)
    return out


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        sys.stdout.write(help_text())
        return 0
    if "--version" in argv:
        from agent import __version__

        sys.stdout.write(f"cluster-agent {__version__}\n")
        return 0

    as_json = wants_json(argv)
    verbose = any(a.lower() in ("verbose=true", "verbose=1") for a in argv)
    try:
        if "--shell-completion" in argv or "-sc" in argv:
            from agent import completion

            flags = _split_flags(argv)
            return completion.main(flags.completion or "", flags.overrides)
        argv = _summary_folder(argv)
        from agent import gate

        fast = gate.fast_args(argv)
        if fast is not None:  # the launch gate: no Hydra, no datasets (see agent.gate)
            return gate.main_fast(fast)
        flags = _split_flags(argv)
        from agent import searchpath

        searchpath.set_config_dir(flags.config_dir)
        if flags.multirun:
            from agent import multirun

            return multirun.main(flags, argv)
        if flags.info:
            from agent import info

            return info.main(flags.overrides)
        return _run_one(flags, argv)
    except AgentError as exc:
        if verbose:
            import traceback

            traceback.print_exc()
        sys.stderr.write(f"cluster-agent: error: {exc}\n")
        if as_json:  # every exit prints one JSON document with output=json
            sys.stdout.write(json.dumps({"error": str(exc), "exit": exc.exit_code}) + "\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("cluster-agent: interrupted\n")
        if as_json:
            sys.stdout.write(json.dumps({"error": "interrupted", "exit": 130}) + "\n")
        return 130


def _run_one(flags: Flags, argv: List[str]) -> int:
    from agent import config, gate

    overrides = flags.overrides
    if flags.show_cfg:
        from omegaconf import OmegaConf

        composed = config.compose_config(overrides)
        config.to_typed(composed)  # validate, as a run would
        sys.stdout.write(OmegaConf.to_yaml(composed, resolve=True))
        return 0
    cfg = config.load(overrides)  # Hydra compose, or its memo when nothing changed
    if cfg.output.name == "shell" and cfg.action.name != "check":
        raise AgentError(f"output=shell prints `export` lines for an eval job and goes only with action=check "
                         f"(this is action={cfg.action.name}); use output=text or output=json")
    from agent import paths

    where = paths.for_config(cfg)
    note_relative("manifest", cfg.manifest, where.manifest)
    if cfg.action.name == "check":
        # the job's consumer when the command line names one, else the manifest's
        named = any(a.split("=", 1)[0].lstrip("+") in ("consumer", "consumer.kind") for a in overrides)
        call, experiment, consumer = gate.job_call({
            "cell": cfg.cell, "data_files": cfg.data_files, "field": cfg.field, "experiment": cfg.experiment,
            "lm_eval_task": cfg.lm_eval_task, "include_path": cfg.include_path,
            "consumer": cfg.consumer.kind.name if named else None})
        where = paths.for_config(dataclasses.replace(cfg, experiment=experiment))
        result = gate.check(where.manifest, cfg.task, consumer=consumer, call=call)
        return gate.emit(result, cfg.output.name, log_file=where.log_file)
    if cfg.launcher.kind.name == "slurm" and cfg.action.name == "prebuild":
        from agent.launcher import submit_prebuild

        from agent import searchpath

        # the job composes the same config: the same --config-dir (absolute), the same overrides
        config_dir = searchpath.config_dir()
        return submit_prebuild(cfg, (["--config-dir", config_dir] if config_dir else []) + overrides)
    return _run_logged(cfg)


def note_relative(key: str, value: Optional[str], resolved) -> None:
    """A relative manifest= resolves inside the state folder (the summary's folder unless
    site.state_dir says otherwise), not the current folder: say where it lands."""
    if value and not os.path.isabs(os.path.expandvars(os.path.expanduser(str(value)))):
        sys.stderr.write(f"cluster-agent: note: {key}={value} is relative: it resolves inside the state folder "
                         f"(site.state_dir, else the summary's folder), not the current folder: {resolved}\n")


def _run_logged(cfg) -> int:
    from agent import logs, run
    from agent import paths as locations

    paths = locations.for_config(cfg)
    log_file = None
    if cfg.action.name == "prebuild":
        apply_umask(cfg.site.umask)  # before the log file is created; build workers inherit it
    # Only a real run on an existing summary gets a log file: a bad experiment= path must
    # not leave logs/ folders behind (the summary error is reported by run.run).
    if cfg.action.name == "prebuild" and paths.summary.is_file():
        try:
            # loguru creates the file (and its folders) on the first line: check we could
            folder = paths.log_file.parent
            while not folder.exists() and folder != folder.parent:
                folder = folder.parent
            if not folder.is_dir() or not os.access(folder, os.W_OK) or (
                    paths.log_file.exists() and not os.access(paths.log_file, os.W_OK)):
                raise PermissionError(13, "Permission denied")
            log_file = paths.log_file
        except OSError as exc:
            sys.stderr.write(f"cluster-agent: warning: log file {paths.log_file} not writable ({exc.strerror}); "
                             "logging to stderr only\n")
    write = None
    if sys.stderr.isatty() and cfg.output.name == "text":
        from tqdm import tqdm

        def write(message: str) -> None:
            tqdm.write(message.rstrip("\n"), file=sys.stderr)

    logs.setup(log_file, cfg.verbose, write)
    return run.run(cfg)


def apply_umask(site_umask) -> None:
    """The site's umask (e.g. 0002, group-shared); without one, the inherited umask with
    world-write masked off: nothing the agent writes is ever world-writable. The one
    place it is set: forked build workers and the verification process inherit it."""
    if site_umask is not None:
        os.umask(int(str(site_umask), 8))
    else:
        current = os.umask(0o022)
        os.umask(current | 0o002)


def console() -> None:
    """The `cluster-agent` command (and `python -m agent`): main(), then an exit without
    the interpreter's teardown when nothing is left that needs it.

    Freeing every module and object at exit is pure cost for a short process: measured
    8-13 ms of the gate's ~85 ms and ~23 ms of a 1,000-entry unchanged re-run (issue 14).
    What an exit must still do is done first: the atexit functions (logging, loguru),
    then flushing stdout and stderr. A run that started worker processes or left a
    non-daemon thread, or a flush that fails (a closed pipe), exits the normal way."""
    code = main()
    threading = sys.modules.get("threading")
    others = threading is not None and any(
        t is not threading.main_thread() and t.is_alive() and not t.daemon for t in threading.enumerate())
    if others or "multiprocessing" in sys.modules:
        sys.exit(code)
    import atexit

    atexit._run_exitfuncs()  # what Py_Finalize would run; it also clears them
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        sys.exit(code)
    os._exit(code)


if __name__ == "__main__":
    console()
