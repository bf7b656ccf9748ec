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

import contextlib
import os
import re
import typing
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

# where shipped folders and configured paths are: agent.paths (the gate imports it without this module)
from agent.paths import EXAMPLE_SUMMARY, PACKAGE_DIR, _bundled, expand, inside  # noqa: E402,F401

CONF_DIR = _bundled("conf")
from agent.searchpath import GROUPS  # noqa: E402  (stdlib only)


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
    # action=check for an lm-eval job: what it passes to --tasks (and --include_path)
    lm_eval_task: Optional[str] = None
    include_path: Optional[str] = None
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
    """Every option of a config group over the search path (agent.searchpath)."""
    from agent import searchpath

    return list(searchpath.options(group))


def _options_with_folders(group: str) -> str:
    from agent import searchpath

    return ", ".join(f"{name} ({loc.path / group})" for name, loc in searchpath.options(group).items())


_TOP_KEYS = [f.name for f in AgentConfig.__dataclass_fields__.values()]  # type: ignore[attr-defined]


def _suggest(word: str, choices: List[str]) -> str:
    import difflib  # only for an error message

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


def _field_type(dotted: str) -> Any:
    """The schema type at a dotted key, or None if the schema has no such key."""
    node: Any = AgentConfig
    for part in dotted.split("."):
        fields_ = getattr(node, "__dataclass_fields__", None)
        if fields_ is None or part not in fields_:
            return None
        node = fields_[part].type
        node = globals().get(node, node) if isinstance(node, str) else node
    return node


def _no_key(key: str) -> str:
    """'site has no key hf_cach (did you mean hf_cache?)' for the first missing part of a key."""
    parts = key.split(".")
    for i in range(len(parts)):
        if _field_type(".".join(parts[: i + 1])) is None:
            parent = ".".join(parts[:i])
            try:
                choices = _keys_of(parent)
            except (KeyError, AttributeError):
                choices = []
            where = parent or "the config"
            return f"{where} has no key '{parts[i]}'{_suggest(parts[i], choices)}"
    return f"'{key}' is not a key that can be added"


def _is_open_entry(key: str) -> bool:
    """site.env.VAR: the only keys the schema leaves open for the user to add."""
    return any(key.startswith(m + ".") and key.count(".") == m.count(".") + 1 for m in _OPEN_MAPPINGS)


_SWEEP = re.compile(r",|^\s*(range|glob|choice)\(")


def _check_overrides(overrides: List[str]) -> None:
    """Catch typos and no-ops before Hydra does, each as one line with a suggestion.

    Strict on purpose: Hydra's `+key=value` adds any key (the schema's struct flag does not
    stop it) and `~key` deletes one, so a misspelt `+site.hf_cach=/x` would be silently
    ignored. `+` may only add what the schema leaves open (site.env.VAR); `hydra.*` is
    honoured only for hydra.searchpath (the config search path), refused otherwise."""
    for item in overrides:
        raw_key = item.split("=", 1)[0]
        if raw_key.lstrip("+~").startswith(("hydra.", "hydra/")) or raw_key.lstrip("+~") == "hydra":
            _check_hydra_override(item)
            continue
        if raw_key.startswith("~"):
            _check_delete(item)
            continue
        if "=" not in item:
            raise ConfigError(
                f"'{item}' is not an override: write key=value, e.g. policy=stop (see --help)"
            )
        key = raw_key.lstrip("+")
        head = key.split(".", 1)[0]
        if head not in _TOP_KEYS:
            raise ConfigError(
                f"unknown key '{head}'{_suggest(head, _TOP_KEYS)}; valid keys: {', '.join(_TOP_KEYS)}"
            )
        value = item.split("=", 1)[1]
        if raw_key.startswith("+"):
            _check_add(raw_key, key, value, head)
        if "." not in key and head in GROUPS:
            options = group_options(head)
            if value not in options:
                if _SWEEP.search(value):
                    raise ConfigError(f"{item}: a sweep over {head} options; add -m (--multirun) to run once per option")
                raise ConfigError(
                    f"{head}={value}: no such {head} profile{_suggest(value, options)}; "
                    f"choose one of {_options_with_folders(head)}"
                )


def _check_add(raw_key: str, key: str, value: str, head: str) -> None:
    if "." not in key and head in GROUPS:
        raise ConfigError(f"{raw_key}={value}: {head} always has an option; choose it without '+': {head}={value}")
    if _is_open_entry(key):
        return
    if raw_key.startswith("++") and _field_type(key) is not None:
        return  # ++ = set whether or not it exists: the same as key=value here
    if _field_type(key) is not None:
        raise ConfigError(f"{raw_key}={value}: {key} already exists; set it without '+': {key}={value}")
    raise ConfigError(f"{raw_key}={value}: {_no_key(key)}; '+' only adds entries to "
                      f"{' or '.join(_OPEN_MAPPINGS)} (e.g. +site.env.VAR=value)")


def _check_delete(item: str) -> None:
    key = item[1:].split("=", 1)[0]
    if _is_open_entry(key):
        return
    if key in GROUPS:
        raise ConfigError(f"{item}: every config group needs an option; choose one with {key}=NAME "
                          f"({', '.join(group_options(key))})")
    kind = _field_type(key)
    if kind is None:
        raise ConfigError(f"{item}: {_no_key(key)}")
    optional = "Optional" in str(kind) or (typing.get_origin(kind) is typing.Union)
    fix = f"to unset it write {key}=null" if optional else f"set it instead, e.g. {key}=VALUE"
    raise ConfigError(f"{item}: {key} is part of the schema and cannot be deleted; {fix} "
                      f"(only {' and '.join(m + '.VAR' for m in _OPEN_MAPPINGS)} entries can be removed with ~)")


HONOURED_HYDRA = ("hydra.searchpath",)


def _check_hydra_override(item: str) -> None:
    key = item.split("=", 1)[0].lstrip("+~")
    if key in HONOURED_HYDRA and not item.startswith(("+", "~")) and "=" in item:
        return
    raise ConfigError(
        f"{item}: cluster-agent composes with Hydra's compose API and runs no Hydra job, so Hydra's own "
        f"settings have no effect; the only hydra.* override it honours is hydra.searchpath=[DIR,...] "
        f"(extra config folders; or use --config-dir DIR); for debug output use verbose=true")


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


def compose_config(overrides: List[str], with_hydra: bool = False) -> Any:
    """Compose conf/config.yaml over the search path with the overrides; a DictConfig typed
    by AgentConfig (with Hydra's own `hydra` node too when `with_hydra`, for --info)."""
    from agent import searchpath

    _check_overrides(overrides)
    overrides = _quote_plain_values(overrides)
    searchpath.set_hydra_searchpath(_hydra_searchpath(overrides))
    searchpath.check_folders()
    _check_defaults_file(searchpath.defaults_file())
    stale = searchpath.stale_checkout_file()
    if stale is not None:
        import sys

        sys.stderr.write(f"cluster-agent: warning: {stale} is no longer read; move it to "
                         f"{searchpath.user_folder() / searchpath.DEFAULTS_FILE}\n")
    overrides = overrides + searchpath.defaults_override()
    from hydra import compose
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with hydra_context():
            cfg = compose(config_name="config", overrides=overrides, return_hydra_config=with_hydra)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(_one_line(exc)) from exc
    return cfg


@contextlib.contextmanager
def hydra_context():
    """initialize_config_dir, with our search path instead of one folder (Hydra's own
    ConfigSearchPath: --config-dir, $XDG_CONFIG_HOME/cluster-agent, CLUSTER_AGENT_CONFIG_PATH,
    the shipped conf/); yields Hydra's config loader (multirun's glob() lists options with it)."""
    from agent import searchpath
    from hydra import version
    from hydra._internal.hydra import Hydra
    from hydra.core.global_hydra import GlobalHydra

    _register()
    version.setbase("1.3")
    GlobalHydra.instance().clear()
    Hydra.create_main_hydra2(task_name="cluster-agent", config_search_path=searchpath.hydra_search_path(CONF_DIR))
    try:
        yield GlobalHydra.instance().config_loader()
    finally:
        GlobalHydra.instance().clear()


def _hydra_searchpath(overrides: List[str]) -> List[str]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for item in overrides:
        if item.startswith("hydra.searchpath="):
            value = OverridesParser.create().parse_override(item).value()
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{item}: write a list of folders, e.g. hydra.searchpath=[/etc/cluster-agent]")
            for v in value:
                folder = v[len("file://"):] if v.startswith("file://") else v
                if v.startswith("pkg://") or not os.path.isdir(folder):
                    raise ConfigError(f"{item}: {v} is not a folder (cluster-agent reads file:// folders only)")
            return [str(v) for v in value]
    return []


def _check_defaults_file(path: Optional[Path]) -> None:
    """A defaults file chooses profiles (`defaults: [override /site: mylab]`) and sets top-level
    keys; it may not set a group's keys (`policy: {mode: stop}`): merged after the group's
    option, such a value would outrank the option chosen on the command line (policy=continue)."""
    if path is None:
        return
    import yaml

    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read this defaults file ({str(exc).splitlines()[0]})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: a defaults file is a mapping (defaults: [...] and top-level keys)")
    for group in GROUPS:
        if group in doc:
            raise ConfigError(
                f"{path}: sets {group}.* keys, which would outrank {group}=... on the command line; choose a "
                f"profile instead (defaults: [override /{group}: NAME]), or make {group}/<name>.yaml that extends "
                f"one (defaults: [{group_options(group)[0] if group_options(group) else 'NAME'}, _self_]) and set the keys there")


def to_typed(cfg: Any, check: bool = True) -> AgentConfig:
    """Turn the composed DictConfig into AgentConfig objects and check what types can't."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        typed: AgentConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    except OmegaConfBaseException as exc:
        raise ConfigError(_one_line(exc)) from exc
    if check:
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
    the memo of an earlier compose (agent.confcache: skips ~0.4 s of Hydra). Plain top-level
    values (experiment=, task=, action=, ...) are set on the typed result, so a new
    experiment path reuses the memo of the same profiles."""
    from agent import __version__, confcache, searchpath

    shape, plain = confcache.split_plain(overrides, AgentConfig)
    cache_key = None
    if confcache.enabled():
        if any(o.startswith("hydra.searchpath=") for o in shape):
            searchpath.set_hydra_searchpath(_hydra_searchpath(shape))
        cache_key = confcache.key(shape, CONF_DIR, __file__, __version__, searchpath.memo_files())
        cached = confcache.get(cache_key, AgentConfig, plain=bool(plain))
        if cached is not None:
            typed = confcache.apply_plain(cached, plain)
            validate(typed)
            return typed
    _check_overrides(overrides)  # every override, the plain ones too, before any compose
    from omegaconf import OmegaConf

    composed = compose_config(shape)
    raw = OmegaConf.to_container(composed, resolve=False)
    safe = confcache.plain_safe(raw)
    if plain and not safe:  # something refers to a plain key: only Hydra can compose it
        return to_typed(compose_config(overrides))
    stored = to_typed(composed, check=False)
    typed = confcache.apply_plain(stored, plain)
    validate(typed)
    if cache_key is not None and typed.action.name != "plan":  # plan writes nothing, not even the memo
        confcache.put(cache_key, stored, raw, is_plain_safe=safe)
    return typed
