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
    monkeypatch.delenv("CLUSTER_AGENT_CONFIG_CACHE", raising=False)
    return dict(os.environ)


def test_second_identical_command_line_skips_hydra_and_gets_the_same_config(memo_env, tmp_path):
    overrides = ["policy=stop", "consumer=datasets", "jobs=3", f"experiment={tmp_path}/s.yaml"]
    first = _load(overrides, memo_env)
    second = _load(overrides, memo_env)
    assert first["hydra"] is True and second["hydra"] is False
    assert second["cfg"] == first["cfg"]
    assert second["cfg"]["jobs"] == 3 and second["cfg"]["policy"]["mode"] == "stop"
    assert len(list((tmp_path / "xdg" / "cluster-agent" / "config").glob("*.json"))) == 1
    # another command line is another memo entry, composed by Hydra
    third = _load(overrides + ["jobs=4"], memo_env)
    assert third["hydra"] is True and third["cfg"]["jobs"] == 4


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
    (memo_file,) = (tmp_path / "xdg" / "cluster-agent" / "config").glob("*.json")
    memo_file.write_text("{not json")
    again = _load(["policy=continue"], memo_env)
    assert again["hydra"] is True and again["cfg"] == first["cfg"]
    assert json.loads(memo_file.read_text())["config"] == first["cfg"]  # rewritten whole
