"""The composed-config memo (agent.confcache): a repeated command line skips Hydra, and
gets exactly the config Hydra would compose; anything the config depended on that moved
(conf files, ${oc.env:...} values) means composing again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent import confcache
from agent.config import GROUPS, AgentConfig, compose_config, group_options, to_typed

ALL_OPTIONS = [(g, o) for g in GROUPS for o in group_options(g)]

# a fresh interpreter: did config.load import Hydra, and what did it return?
PROBE = """
import json, sys
from agent import config, confcache
cfg = config.load(sys.argv[1:])
print(json.dumps({"hydra": "hydra" in sys.modules, "cfg": confcache.to_plain(cfg)}))
"""


def _load(overrides, env):
    out = subprocess.run([sys.executable, "-c", PROBE, *overrides], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.fixture
def memo_env(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("CLUSTER_AGENT_CONFIG_MEMO", str(tmp_path / "memo"))
    monkeypatch.delenv("CLUSTER_AGENT_CONFIG_CACHE", raising=False)
    return dict(os.environ)


def test_second_identical_command_line_skips_hydra_and_gets_the_same_config(memo_env, tmp_path):
    overrides = ["policy=stop", "consumer=datasets", "jobs=3", f"experiment={tmp_path}/s.yaml"]
    first = _load(overrides, memo_env)
    second = _load(overrides, memo_env)
    assert first["hydra"] is True and second["hydra"] is False
    assert second["cfg"] == first["cfg"]
    assert second["cfg"]["jobs"] == 3 and second["cfg"]["policy"]["mode"] == "stop"
    assert len(list((tmp_path / "memo").glob("*.json"))) == 1
    # a new command line that only changes plain top-level values reuses the entry
    third = _load(overrides + ["jobs=4", f"experiment={tmp_path}/other.yaml", "task=t1"], memo_env)
    assert third["hydra"] is False and third["cfg"]["jobs"] == 4 and third["cfg"]["task"] == "t1"
    assert third["cfg"]["experiment"] == f"{tmp_path}/other.yaml"
    assert {k: v for k, v in third["cfg"].items() if k not in ("jobs", "experiment", "task")} == \
        {k: v for k, v in first["cfg"].items() if k not in ("jobs", "experiment", "task")}
    # another profile is another memo entry, composed by Hydra
    fourth = _load(overrides + ["site=della"], memo_env)
    assert fourth["hydra"] is True and fourth["cfg"]["site"]["name"] == "della"
    assert len(list((tmp_path / "memo").glob("*.json"))) == 2


def test_memo_can_be_switched_off(memo_env):
    _load(["policy=stop"], memo_env)
    again = _load(["policy=stop"], dict(memo_env, CLUSTER_AGENT_CONFIG_CACHE="0"))
    assert again["hydra"] is True


def test_env_interpolation_is_rechecked(memo_env):
    """site=della reads ${oc.env:USER}: another user must not get alice's cache paths."""
    alice = _load(["site=della"], dict(memo_env, USER="alice"))
    alice2 = _load(["site=della"], dict(memo_env, USER="alice"))
    bob = _load(["site=della"], dict(memo_env, USER="bob"))
    assert alice2["hydra"] is False and alice2["cfg"] == alice["cfg"]
    assert bob["hydra"] is True
    assert "/bob/" in bob["cfg"]["site"]["hf_cache"] and "/alice/" in alice["cfg"]["site"]["hf_cache"]


@pytest.mark.parametrize("group,option", ALL_OPTIONS, ids=[f"{g}={o}" for g, o in ALL_OPTIONS])
def test_round_trip_equals_hydra(group, option, monkeypatch):
    monkeypatch.setenv("USER", "alice")
    typed = to_typed(compose_config([f"{group}={option}"]))
    back = confcache.from_plain(AgentConfig, json.loads(json.dumps(confcache.to_plain(typed))))
    assert back == typed


def test_key_moves_when_a_conf_file_changes(tmp_path):
    conf = tmp_path / "conf"
    (conf / "site").mkdir(parents=True)
    (conf / "config.yaml").write_text("jobs: 1\n")
    schema = str(Path(confcache.__file__).with_name("config.py"))
    k1 = confcache.key(["jobs=2"], conf, schema, "0")
    assert confcache.key(["jobs=2"], conf, schema, "0") == k1
    (conf / "site" / "mine.yaml").write_text("name: mine\n")  # a new profile
    k2 = confcache.key(["jobs=2"], conf, schema, "0")
    (conf / "config.yaml").write_text("jobs: 7\n")  # an edited file (same size, maybe same mtime tick)
    k3 = confcache.key(["jobs=2"], conf, schema, "0")
    assert len({k1, k2, k3}) == 3
    assert confcache.key(["jobs=3"], conf, schema, "0") != k3
    assert confcache.key(["jobs=2"], conf, schema, "0.2") != k3


def test_other_resolvers_are_never_memoized():
    assert confcache.env_dependencies({"a": "${oc.env:USER,x}/y", "b": ["${site.name}"]}) == ["USER"]
    assert confcache.env_dependencies({"a": "${now:%H}"}) is None
    assert confcache.env_dependencies({"a": "plain", "b": 3}) == []


def test_corrupt_memo_means_composing_again(memo_env, tmp_path):
    first = _load(["policy=continue"], memo_env)
    (memo_file,) = (tmp_path / "memo").glob("*.json")
    memo_file.write_text("{not json")
    again = _load(["policy=continue"], memo_env)
    assert again["hydra"] is True and again["cfg"] == first["cfg"]
    assert json.loads(memo_file.read_text())["config"] == first["cfg"]  # rewritten whole


def test_memo_lives_outside_the_cache_roots(memo_env, tmp_path):
    """Default place: platformdirs' user cache folder, not under $XDG_CACHE_HOME (a cache root
    we build: a fresh one must not cost a fresh compose)."""
    env = dict(memo_env, HOME=str(tmp_path / "home"))
    env.pop("CLUSTER_AGENT_CONFIG_MEMO")
    _load(["policy=stop"], env)
    assert list((tmp_path / "home" / ".cache" / "cluster-agent" / "config").glob("*.json"))
    assert not (tmp_path / "xdg").exists()
    fresh_cache = _load(["policy=stop"], dict(env, XDG_CACHE_HOME=str(tmp_path / "xdg2")))
    assert fresh_cache["hydra"] is False


def test_memo_follows_the_search_path(memo_env, tmp_path, no_user_config):
    """A profile in ~/.config/cluster-agent that appears or changes means composing again."""
    (no_user_config / "site").mkdir(parents=True)
    profile = no_user_config / "site" / "mylab.yaml"
    profile.write_text("defaults: [local, _self_]\nname: mylab\nhf_cache: /scratch/one\n")
    first = _load(["site=mylab"], memo_env)
    assert first["cfg"]["site"]["hf_cache"] == "/scratch/one"
    profile.write_text("defaults: [local, _self_]\nname: mylab\nhf_cache: /scratch/two\n")
    second = _load(["site=mylab"], memo_env)
    assert second["hydra"] is True and second["cfg"]["site"]["hf_cache"] == "/scratch/two"
    # another --config-dir is another search path
    other = tmp_path / "cd"
    (other / "site").mkdir(parents=True)
    (other / "site" / "mylab.yaml").write_text("defaults: [local, _self_]\nname: mylab\nhf_cache: /scratch/cd\n")
    probe = PROBE.replace("cfg = config.load", "from agent import searchpath; searchpath.set_config_dir(%r); cfg = config.load" % str(other))
    out = subprocess.run([sys.executable, "-c", probe, "site=mylab"], env=memo_env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["cfg"]["site"]["hf_cache"] == "/scratch/cd"


def test_plain_values_referenced_by_a_profile_are_composed_by_hydra(memo_env, no_user_config):
    """A profile that interpolates a plain key (${task}) must get Hydra's value for a new one."""
    (no_user_config / "site").mkdir(parents=True)
    (no_user_config / "site" / "bytask.yaml").write_text("defaults: [local, _self_]\nname: ${task}\n")
    a = _load(["site=bytask", "task=alpha", "action=prebuild"], memo_env)
    b = _load(["site=bytask", "task=beta", "action=prebuild"], memo_env)
    assert a["cfg"]["site"]["name"] == "alpha" and b["cfg"]["site"]["name"] == "beta"


# --- a new command line: value overrides set on the memo of the same profiles (issue 14) -------

# (a command line that stores the memo, a new one that differs only in value overrides)
NEW_COMMAND_LINES = [
    (["policy=stop"], ["policy=stop", "site.hf_cache=/scratch/a/hf", "jobs=3", "verify=false"]),
    (["site=della"], ["site=della", "site.hf_cache=/scratch/x", "site.lock=soft", "site.lock_timeout_s=30",
                      "site.memory_budget_mb=4096"]),
    (["consumer=datasets", "policy=continue"], ["consumer=datasets", "policy=continue", "consumer.split=validation",
                                                "policy.non_interactive=continue", "launcher.array_threshold=4"]),
    (["+site.env.FOO=bar"], ["+site.env.FOO=bar", "site.xdg_cache_home=/scratch/xdg", "output=json"]),
    (["site=mylab"], ["site=mylab", "site.state_dir=/scratch/state", "site.lock_stale_s=60.5"]),
]


def _hydra(overrides):
    """What Hydra itself composes for the whole command line (in this process)."""
    from agent import config

    config._check_overrides(overrides)
    return confcache.to_plain(to_typed(compose_config(overrides)))


@pytest.mark.parametrize("first,new", NEW_COMMAND_LINES, ids=[" ".join(n) for _, n in NEW_COMMAND_LINES])
def test_new_command_line_of_value_overrides_skips_hydra_and_equals_its_compose(first, new, memo_env, no_user_config,
                                                                               monkeypatch):
    monkeypatch.setenv("USER", "alice")
    (no_user_config / "site").mkdir(parents=True)
    (no_user_config / "site" / "mylab.yaml").write_text("defaults: [local, _self_]\nname: mylab\nhf_cache: /scratch/lab\n")
    env = dict(os.environ)
    stored = _load(first, env)
    assert stored["cfg"] == _hydra(first)
    got = _load(new, env)
    assert got["hydra"] is False, "a new command line of value overrides must not compose"
    assert got["cfg"] == _hydra(new)


def test_what_only_hydra_can_say_is_composed(memo_env, no_user_config):
    """Values that need Hydra's grammar or types (null, quotes, lists, numbers for a string,
    a key given twice in two forms, + and ~) compose, and equal Hydra's answer."""
    _load(["policy=stop"], memo_env)
    for new in (["policy=stop", "site.hf_cache=null"], ["policy=stop", "site.umask=0002"],
                ["policy=stop", "site.slurm.setup=[module load x]"], ["policy=stop", "site.name='two words'"],
                ["policy=stop", "+site.env.A=1", "~site.env.A"], ["policy=stop", "site.hf_cache=/a", "++site.hf_cache=/b"]):
        got = _load(new, memo_env)
        assert got["hydra"] is True, new
        assert got["cfg"] == _hydra(new), new


def test_a_changed_profile_invalidates_the_fast_path(memo_env, no_user_config):
    (no_user_config / "site").mkdir(parents=True)
    profile = no_user_config / "site" / "mylab.yaml"
    profile.write_text("defaults: [local, _self_]\nname: mylab\nhf_cache: /scratch/one\nlock: flock\n")
    _load(["site=mylab"], memo_env)
    profile.write_text("defaults: [local, _self_]\nname: mylab\nhf_cache: /scratch/one\nlock: soft\n")
    got = _load(["site=mylab", "site.hf_cache=/scratch/new"], memo_env)
    assert got["hydra"] is True and got["cfg"]["site"]["lock"] == "soft"
    assert got["cfg"] == _hydra(["site=mylab", "site.hf_cache=/scratch/new"])
