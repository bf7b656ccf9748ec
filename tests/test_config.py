"""Config groups and schema: every shipped option of every group composes and validates.

Composed twice: with Hydra's own compose API (initialize_config_dir / compose as context
managers, as STYLE asks), and through agent.config.load (what the CLI uses), so a broken
profile or a schema/YAML mismatch is caught here rather than on a cluster.
"""

from __future__ import annotations

import re

import pytest
from omegaconf import OmegaConf

from agent import config
from agent.config import CONF_DIR, GROUPS, AgentConfig, group_options
from agent.errors import ConfigError

ALL_OPTIONS = [(g, o) for g in GROUPS for o in group_options(g)]


@pytest.fixture(autouse=True)
def _private_user_cache(tmp_path_factory, monkeypatch):
    """Whatever the agent keeps under XDG_CACHE_HOME (e.g. a config memo) goes to a temporary
    folder, never the developer's ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg")))


def test_every_group_ships_the_documented_options():
    assert set(GROUPS) == {"site", "policy", "consumer", "launcher"}
    assert set(group_options("policy")) == {"ask", "continue", "stop"}
    assert set(group_options("consumer")) == {"inspect", "datasets", "lm_eval"}
    assert set(group_options("launcher")) >= {"local", "slurm"}
    sites = group_options("site")
    assert "local" in sites and len(sites) >= 2, "local plus at least one real-cluster profile"
    # at least one real-cluster profile is for a file system without working flock
    soft = [s for s in sites if config.load([f"site={s}"]).site.lock.name == "soft"]
    assert soft, f"no site profile with lock: soft among {sites}"


@pytest.mark.parametrize("group,option", ALL_OPTIONS, ids=[f"{g}={o}" for g, o in ALL_OPTIONS])
def test_compose_api_every_option(group, option, monkeypatch):
    """Hydra's compose API on conf/, exactly as an app test would; then typed + validated."""
    from hydra import compose, initialize_config_dir

    monkeypatch.setenv("USER", "alice")  # site profiles may use ${oc.env:USER}
    config._register()  # the schemas config.yaml's defaults list names (agent_schema, ...)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"{group}={option}"])
    node = cfg[group]
    # the option's file was really selected (each names itself in its identifying key)
    ident = {"site": "name", "policy": "mode", "consumer": "kind", "launcher": "kind"}[group]
    value = node[ident]
    assert getattr(value, "name", value) == option  # Enum-typed keys hold the member
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert "${" not in repr(resolved), "every interpolation must resolve"
    typed = OmegaConf.to_object(cfg)
    assert isinstance(typed, AgentConfig)
    config.validate(typed)


@pytest.mark.parametrize("group,option", ALL_OPTIONS, ids=[f"{g}={o}" for g, o in ALL_OPTIONS])
def test_load_every_option(group, option, monkeypatch):
    monkeypatch.setenv("USER", "alice")
    cfg = config.load([f"{group}={option}"])
    assert isinstance(cfg, AgentConfig)
    section = getattr(cfg, group)
    if group == "site":
        assert section.name == option
        assert section.lock.name in ("auto", "flock", "soft")
        for path in (section.hf_cache, section.xdg_cache_home):
            assert path is None or "${" not in path
    elif group == "policy":
        assert section.mode.name == option
        assert section.non_interactive.name in ("continue", "stop")
    else:
        assert section.kind.name == option


def test_della_profile_resolves_user_into_its_paths(monkeypatch):
    if "della" not in group_options("site"):
        pytest.skip("no della profile shipped")
    monkeypatch.setenv("USER", "alice")
    cfg = config.load(["site=della"])
    assert cfg.site.lock.name == "soft"
    assert "/alice/" in cfg.site.hf_cache and "/alice/" in cfg.site.xdg_cache_home


def test_defaults_are_the_documented_ones():
    cfg = config.load([])
    assert cfg.site.name == "local"
    assert cfg.policy.mode.name == "ask" and cfg.policy.non_interactive.name == "stop"
    assert cfg.consumer.kind.name == "inspect"
    assert cfg.consumer.split == "train" and cfg.consumer.default_field == "test"
    assert cfg.launcher.kind.name == "local"
    assert cfg.action.name == "prebuild" and cfg.output.name == "text"
    assert cfg.jobs == 1 and cfg.experiment is None


def test_combined_overrides_compose():
    cfg = config.load(["site=della", "policy=stop", "consumer=datasets", "action=plan", "output=json",
                       "jobs=3", "site.hf_cache=/scratch/hf", "policy.non_interactive=continue"])
    assert (cfg.site.name, cfg.site.hf_cache, cfg.site.lock.name) == ("della", "/scratch/hf", "soft")
    assert cfg.policy.mode.name == "stop" and cfg.policy.non_interactive.name == "continue"
    assert cfg.consumer.kind.name == "datasets"
    assert (cfg.action.name, cfg.output.name, cfg.jobs) == ("plan", "json", 3)


@pytest.mark.parametrize("override,must_name", [
    ("polcy=stop", ["polcy", "did you mean 'policy'"]),
    ("site.hf_cach=/x", ["hf_cach", "did you mean 'hf_cache'"]),
    ("consumer.kindd=inspect", ["kindd", "did you mean 'kind'"]),
])
def test_unknown_key_names_key_and_suggestion(override, must_name):
    with pytest.raises(ConfigError) as err:
        config.load([override])
    text = str(err.value)
    assert "\n" not in text
    for part in must_name:
        assert part in text


@pytest.mark.parametrize("override", ["policy=maybe", "policy.mode=maybe"])
def test_bad_policy_value_lists_choices(override):
    with pytest.raises(ConfigError) as err:
        config.load([override])
    text = str(err.value)
    assert "\n" not in text and "maybe" in text
    for choice in ("ask", "continue", "stop"):
        assert choice in text


@pytest.mark.parametrize("override,needle", [
    ("policy.non_interactive=ask", "policy.non_interactive"),
    ("jobs=0", "jobs"),
    ("site.umask=0000", "umask"),
    ("site.lock=nfs", "flock"),
    ("consumer=torch", "datasets"),
])
def test_bad_values_are_one_line_config_errors(override, needle):
    with pytest.raises(ConfigError) as err:
        config.load([override])
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_every_key_in_every_option_file_documents_its_override():
    """STYLE: each key in a config file carries a comment with its override syntax."""
    for group in GROUPS:
        for option in group_options(group):
            path = CONF_DIR / group / f"{option}.yaml"
            for line in path.read_text().splitlines():
                m = re.match(r"^(\w+):\s*(\S.*)?$", line)
                if not m or m.group(1) in ("defaults", "slurm", "name"):
                    continue  # section headers and the profile's own name
                assert "#" in line and "=" in line.split("#", 1)[1], f"{path}: undocumented key: {line!r}"


def test_site_env_entries_are_added_with_plus_as_documented():
    cfg = config.load(["+site.env.MY_VAR=x", "+site.env.OTHER=2"])
    assert cfg.site.env == {"MY_VAR": "x", "OTHER": "2"}
    with pytest.raises(ConfigError) as err:
        config.load(["site.env.MY_VAR=x"])
    assert "+site.env.MY_VAR=VALUE" in str(err.value)
    assert "# +site.env.VAR=value" in (CONF_DIR / "site" / "local.yaml").read_text()


def test_override_values_hydra_cannot_parse_are_taken_as_strings():
    cfg = config.load(["conditions.pattern={condition}.json", "site.hf_cache=~/hf (shared)"])
    assert cfg.conditions.pattern == "{condition}.json"
    assert cfg.site.hf_cache == "~/hf (shared)"
    with pytest.raises(ConfigError) as err:
        config.load(["""site.hf_cache=a'b"c("""])
    assert "cannot parse this override" in str(err.value)
