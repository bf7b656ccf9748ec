"""Typed configuration: the schema, composing it with Hydra, validating it.

The schema is a tree of dataclasses registered in Hydra's ConfigStore; every YAML file
under ``conf/`` extends one of them, so a misspelt key or a bad enum value fails while
the config is composed, with the key's full name. ``compose_config`` turns every Hydra
or OmegaConf complaint into one ``ConfigError`` line naming the key and the choices.

We use Hydra's compose API rather than ``@hydra.main``: ``@hydra.main`` prints its own
multi-line errors and exits 1, while our contract (DESIGN §7) needs one line and exit 2,
and the launch gate must not pay for importing Hydra at all (see ``agent.gate``).
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Dict, List, Optional

from agent.consumers import names as _consumer_names
from agent.errors import ConfigError

# Enum with lowercase member names (one of them, `continue`, is a Python keyword), so
# that OmegaConf accepts exactly the words a user types: policy.mode=continue.
PolicyMode = Enum("PolicyMode", {"ask": "ask", "continue": "continue", "stop": "stop"})
LockKind = Enum("LockKind", {"auto": "auto", "flock": "flock", "soft": "soft"})
# one value per module of agent/consumers/: a new consumer plugin is a valid consumer.kind
ConsumerKind = Enum("ConsumerKind", {n: n for n in _consumer_names()})
Action = Enum("Action", {"prebuild": "prebuild", "plan": "plan", "check": "check"})
OutputFormat = Enum("OutputFormat", {"text": "text", "json": "json", "shell": "shell"})
LauncherKind = Enum("LauncherKind", {"local": "local", "slurm": "slurm"})

PACKAGE_DIR = Path(__file__).resolve().parent


def _bundled(name: str) -> Path:
    """A folder shipped with the package: inside it when installed, beside it in a checkout."""
    installed = PACKAGE_DIR / name
    return installed if installed.is_dir() else PACKAGE_DIR.parent / name


CONF_DIR = _bundled("conf")
EXAMPLE_SUMMARY = _bundled("examples") / "experiment_summary.yaml"
GROUPS = ("site", "policy", "consumer", "launcher")


@dataclass
class SlurmDefaults:
    partition: Optional[str] = None
    account: Optional[str] = None
    time: str = "01:00:00"
    mem: str = "4G"
    cpus_per_task: int = 1
    # shell lines each job runs before cluster-agent (module load, venv activation)
    setup: List[str] = field(default_factory=list)


@dataclass
class SiteConfig:
    name: str = "local"
    # HF datasets cache root; null = what `datasets` itself would use
    # (HF_DATASETS_CACHE, else HF_HOME/datasets, else ~/.cache/huggingface/datasets)
    hf_cache: Optional[str] = None
    # XDG_CACHE_HOME for jobs: inspect-ai keeps <it>/inspect_ai/hf_datasets; null = platformdirs default
    xdg_cache_home: Optional[str] = None
    # where manifests and logs go; null = beside the experiment summary
    state_dir: Optional[str] = None
    # auto: soft on network file systems, flock on local disks (agent/fsdetect.py)
    lock: LockKind = LockKind["auto"]
    lock_timeout_s: float = 900.0
    lock_stale_s: float = 3600.0
    # octal umask for everything the agent writes ("0002" = group-shared); null = inherit
    umask: Optional[str] = None
    # parallel builds never exceed this much estimated peak RSS (150 MB + 16 x file size each, measured)
    memory_budget_mb: int = 8192
    # extra variables every job must export, recorded in the manifest
    env: Dict[str, str] = field(default_factory=dict)
    slurm: SlurmDefaults = field(default_factory=SlurmDefaults)


@dataclass
class PolicyConfig:
    mode: PolicyMode = PolicyMode["ask"]
    # what `ask` does when stdin is not a terminal: continue or stop
    non_interactive: PolicyMode = PolicyMode["stop"]


@dataclass
class ConsumerConfig:
    kind: ConsumerKind = ConsumerKind["inspect"]
    # the split= the jobs pass (the json loader puts everything in "train")
    split: str = "train"
    # the field= (top-level key of a .json file) when a task names none
    default_field: str = "test"


@dataclass
class LauncherConfig:
    kind: LauncherKind = LauncherKind["local"]
    # with launcher=slurm: one job per dataset (an array) once there are more than this
    array_threshold: int = 8
    # folder for the rendered sbatch scripts and job output; null = <state dir>/logs/slurm
    folder: Optional[str] = None


@dataclass
class ConditionsConfig:
    # folder that tasks' `eval_condition` names resolve in (relative to the summary)
    dir: Optional[str] = None
    pattern: str = "{condition}.json"


@dataclass
class AgentConfig:
    # the experiment summary (YAML); null = the bundled example
    experiment: Optional[str] = None
    site: SiteConfig = field(default_factory=SiteConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    consumer: ConsumerConfig = field(default_factory=ConsumerConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    conditions: ConditionsConfig = field(default_factory=ConditionsConfig)
    action: Action = Action["prebuild"]
    output: OutputFormat = OutputFormat["text"]
    jobs: int = 1
    manifest: Optional[str] = None
    log_file: Optional[str] = None
    # narrow plan/check to one task of the summary
    task: Optional[str] = None
    # action=check for one job's exact call: its scaffolded cell folder, or the data_files
    # string (and field) it passes, taken in the current folder
    cell: Optional[str] = None
    data_files: Optional[str] = None
    field: Optional[str] = None
    # narrow plan/prebuild to one entry (0-based, plan order): one task of a pre-build array
    entry: Optional[int] = None
    # after building, load every entry with the real consumer in a fresh process
    verify: bool = True
    # rebuild every entry even if the manifest says it is ready
    force: bool = False
    verbose: bool = False


def _register() -> None:
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="agent_schema", node=AgentConfig)
    cs.store(group="site", name="site_schema", node=SiteConfig)
    cs.store(group="policy", name="policy_schema", node=PolicyConfig)
    cs.store(group="consumer", name="consumer_schema", node=ConsumerConfig)
    cs.store(group="launcher", name="launcher_schema", node=LauncherConfig)


def group_options(group: str) -> List[str]:
    """The shipped options of a config group (file names under conf/<group>/)."""
    folder = CONF_DIR / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


_TOP_KEYS = [f.name for f in AgentConfig.__dataclass_fields__.values()]  # type: ignore[attr-defined]


def _suggest(word: str, choices: List[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _one_line(exc: BaseException) -> str:
    """Hydra wraps OmegaConf's error, which spans lines (full_key, object_type, ...):
    take the innermost message's first line and prefix the key it names."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    key = re.search(r"full_key: (\S+)", text)
    if key:
        first = f"{key.group(1)}: {first}"
        parent, _, leaf = key.group(1).rpartition(".")
        if first.startswith(f"{key.group(1)}: Key '{leaf}' not in"):
            first += f"{_suggest(leaf, _keys_of(parent))}; valid keys: {', '.join(_keys_of(parent))}"
        elif "is not in struct" in first and parent in _OPEN_MAPPINGS:
            first += f"; to add an entry write +{key.group(1)}=VALUE"
    return first


_OPEN_MAPPINGS = ("site.env",)  # Dict fields whose keys the user chooses


def _keys_of(dotted: str) -> List[str]:
    """Field names of the schema node at a dotted path ('' = the root)."""
    node: Any = AgentConfig
    for part in filter(None, dotted.split(".")):
        node = {f.name: f for f in node.__dataclass_fields__.values()}[part].type
        node = globals().get(node, node) if isinstance(node, str) else node
    return [f.name for f in node.__dataclass_fields__.values()]


def _check_overrides(overrides: List[str]) -> None:
    """Catch the common typos before Hydra does, with a better message."""
    for item in overrides:
        if item.startswith(("hydra.", "+hydra", "~")):
            continue
        if "=" not in item:
            raise ConfigError(
                f"'{item}' is not an override: write key=value, e.g. policy=stop (see --help)"
            )
        key = item.split("=", 1)[0].lstrip("+")
        head = key.split(".", 1)[0]
        if head not in _TOP_KEYS:
            raise ConfigError(
                f"unknown key '{head}'{_suggest(head, _TOP_KEYS)}; valid keys: {', '.join(_TOP_KEYS)}"
            )
        if "." not in key and head in GROUPS:
            value = item.split("=", 1)[1]
            options = group_options(head)
            if value not in options:
                raise ConfigError(
                    f"{head}={value}: no such {head} profile{_suggest(value, options)}; "
                    f"choose one of {', '.join(options)} (conf/{head}/)"
                )


def _quote_plain_values(overrides: List[str]) -> List[str]:
    """Hydra's override grammar rejects some characters paths often hold (`~`, parentheses):
    `experiment=~/x.yaml` fails to parse. Such a value is quoted, so it reaches the config
    exactly as typed; anything still unparsable is reported as one line."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    out = []
    for item in overrides:
        try:
            parser.parse_override(item)
        except HydraException:
            key, _, value = item.partition("=")
            quote = "'" if "'" not in value else '"' if '"' not in value else None
            if not value or quote is None:  # unparsable as-is, so not a list/dict: a string
                raise ConfigError(f"'{item}': cannot parse this override; quote the value, e.g. {key}='...'") from None
            item = f"{key}={quote}{value}{quote}"
            try:
                parser.parse_override(item)
            except HydraException:
                raise ConfigError(f"'{key}={value}': cannot parse this override; quote the value") from None
        out.append(item)
    return out


def compose_config(overrides: List[str]) -> Any:
    """Compose conf/config.yaml with the overrides; a DictConfig typed by AgentConfig."""
    _check_overrides(overrides)
    overrides = _quote_plain_values(overrides)
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    _register()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(_one_line(exc)) from exc
    return cfg


def to_typed(cfg: Any) -> AgentConfig:
    """Turn the composed DictConfig into AgentConfig objects and check what types can't."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        typed: AgentConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    except OmegaConfBaseException as exc:
        raise ConfigError(_one_line(exc)) from exc
    validate(typed)
    return typed


def validate(cfg: AgentConfig) -> None:
    if cfg.jobs < 1:
        raise ConfigError(f"jobs={cfg.jobs}: must be 1 or more")
    if cfg.policy.non_interactive.name == "ask":
        raise ConfigError(
            "policy.non_interactive=ask: without a terminal nobody can answer; use continue or stop"
        )
    if cfg.site.umask is not None and not re.fullmatch(r"0?[0-7]{3}", str(cfg.site.umask)):
        raise ConfigError(f"site.umask={cfg.site.umask}: write an octal umask such as 0002 or 0022")
    if cfg.site.umask is not None and int(str(cfg.site.umask), 8) & 0o002 == 0:
        raise ConfigError(
            f"site.umask={cfg.site.umask}: would make caches world-writable; use 0002 (group) or 0022"
        )
    if cfg.site.lock_timeout_s <= 0 or cfg.site.lock_stale_s <= 0:
        raise ConfigError("site.lock_timeout_s and site.lock_stale_s must be positive seconds")
    if cfg.site.memory_budget_mb < 256:
        raise ConfigError(f"site.memory_budget_mb={cfg.site.memory_budget_mb}: must be 256 or more")


def load(overrides: List[str]) -> AgentConfig:
    """The typed, validated config for these overrides. Composed with Hydra, or taken from
    the memo of an earlier identical compose (agent.confcache: skips ~0.5 s of Hydra)."""
    from agent import __version__, confcache

    cache_key = None
    if confcache.enabled():
        cache_key = confcache.key(overrides, CONF_DIR, __file__, __version__)
        cached = confcache.get(cache_key, AgentConfig)
        if cached is not None:
            validate(cached)
            return cached
    composed = compose_config(overrides)
    typed = to_typed(composed)
    if cache_key is not None and typed.action.name != "plan":  # plan writes nothing, not even the memo
        from omegaconf import OmegaConf

        confcache.put(cache_key, typed, OmegaConf.to_container(composed, resolve=False))
    return typed


def inside(base: Path, value: Optional[str], key: str) -> Optional[Path]:
    """Where `manifest=` / `log_file=` point. An absolute path (after ~ and $VARS) is the
    user's explicit choice. A relative one resolves inside `base` (the state folder: the
    summary's folder unless site.state_dir says otherwise), never against the current
    folder, and may not climb out of it with '..': nothing is written outside the
    configured folders by accident."""
    if value is None or str(value).strip() == "":
        return None
    raw = os.path.expandvars(os.path.expanduser(str(value)))
    if os.path.isabs(raw):
        return Path(os.path.abspath(raw))
    base = Path(os.path.abspath(base))
    resolved = Path(os.path.normpath(os.path.join(str(base), raw)))
    if resolved != base and base not in resolved.parents:
        raise ConfigError(
            f"{key}={value}: a relative path must stay inside {base} (it resolves to {resolved}); "
            "write an absolute path to put it elsewhere")
    return resolved


def expand(path: Optional[str]) -> Optional[Path]:
    """A configured path with ~ and $VARS expanded, made absolute (never relative to cwd
    for keys the user did not write relative)."""
    if path is None or str(path).strip() == "":
        return None
    return Path(os.path.abspath(os.path.expandvars(os.path.expanduser(str(path)))))
