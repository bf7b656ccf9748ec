"""The config search path as a user meets it: profiles in ~/.config/cluster-agent, in the
folders of CLUSTER_AGENT_CONFIG_PATH and in --config-dir are used by site=NAME (their cache
roots get the files), shadow lower ones, extend shipped ones; errors and --info name the
folders; the command line beats every defaults file; the gate follows the same path."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import run_agent, write_records, write_summary
from corehelp import assert_one_error_line


def _profile(folder: Path, name: str, body: str, group: str = "site") -> Path:
    (folder / group).mkdir(parents=True, exist_ok=True)
    path = folder / group / f"{name}.yaml"
    path.write_text(body)
    return path


def _summary(tmp_path: Path) -> Path:
    data = write_records(tmp_path / "exp" / "data" / "q.json", 5)
    return write_summary(tmp_path / "exp", [{"name": "t1", "dataset": str(data)}])


def _plan(*args, env=None):
    proc = run_agent("action=plan", "output=json", *args, env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_a_profile_from_each_location_is_built_into_its_own_cache_root(tmp_path, caches, no_user_config):
    """Real pre-builds (consumer=datasets, the real load_dataset) under each location's profile:
    the files land under the cache root that profile names."""
    summary = _summary(tmp_path)
    lab, cd = tmp_path / "lab", tmp_path / "cd"
    roots = {name: tmp_path / "roots" / name for name in ("user", "lab", "cd")}
    _profile(no_user_config, "mine", f"defaults: [local, _self_]\nname: mine\nhf_cache: {roots['user']}\n")
    _profile(lab, "labsite", f"defaults: [local, _self_]\nname: labsite\nhf_cache: {roots['lab']}\n")
    _profile(cd, "cdsite", f"defaults: [local, _self_]\nname: cdsite\nhf_cache: {roots['cd']}\n")
    env = {"CLUSTER_AGENT_CONFIG_PATH": f"{tmp_path / 'nonexistent'}:{lab}"}
    for site, extra in (("mine", []), ("labsite", []), ("cdsite", ["--config-dir", str(cd)])):
        proc = run_agent(*extra, f"experiment={summary}", f"site={site}", "consumer=datasets", "verify=false",
                         f"manifest={tmp_path / site / 'manifest.json'}", env=env)
        assert proc.returncode == 0, proc.stderr
        root = roots[{"mine": "user", "labsite": "lab", "cdsite": "cd"}[site]]
        assert list(root.rglob("*.arrow")), f"site={site}: nothing built under {root}"
        doc = json.loads((tmp_path / site / "manifest.json").read_text())
        assert doc["env"]["HF_DATASETS_CACHE"] == str(root)


def test_higher_folders_shadow_lower_ones_and_profiles_extend_across_them(tmp_path, no_user_config):
    lab, cd = tmp_path / "lab", tmp_path / "cd"
    _profile(lab, "mylab", "defaults: [della, _self_]\nname: mylab\nhf_cache: /lab/hf\nlock_timeout_s: 11\n")
    _profile(no_user_config, "mylab", "defaults: [local, _self_]\nname: mylab\nhf_cache: /user/hf\n")
    _profile(cd, "mine", "defaults: [mylab, _self_]\nname: mine\nlock: soft\n")
    env = {"CLUSTER_AGENT_CONFIG_PATH": str(lab)}
    proc = run_agent("--config-dir", str(cd), "site=mine", "--cfg", "job", env=env)
    assert proc.returncode == 0, proc.stderr
    site = __import__("yaml").safe_load(proc.stdout)["site"]
    # mine (--config-dir) extends mylab from ~/.config (which shadows the lab's), which extends the shipped local
    assert site["name"] == "mine" and site["hf_cache"] == "/user/hf" and site["lock"] == "soft"
    assert site["lock_timeout_s"] == 900  # local's, not the lab's 11 (shadowed)
    # colon-separated: an earlier folder wins over a later one, as in PATH
    first = tmp_path / "first"
    _profile(first, "mylab", "defaults: [local, _self_]\nname: mylab\nhf_cache: /first/hf\n")
    (no_user_config / "site" / "mylab.yaml").unlink()
    proc = run_agent("site=mylab", "--cfg", "job", env={"CLUSTER_AGENT_CONFIG_PATH": f"{first}:{lab}"})
    assert __import__("yaml").safe_load(proc.stdout)["site"]["hf_cache"] == "/first/hf"


def test_unknown_site_lists_every_profile_with_its_folder(tmp_path, no_user_config):
    lab = tmp_path / "lab"
    _profile(no_user_config, "mylab", "defaults: [local, _self_]\nname: mylab\n")
    _profile(lab, "shared", "defaults: [local, _self_]\nname: shared\n")
    proc = run_agent("site=mylb", env={"CLUSTER_AGENT_CONFIG_PATH": str(lab)})
    line = assert_one_error_line(proc)
    assert "did you mean 'mylab'" in line
    assert f"mylab ({no_user_config / 'site'})" in line and f"shared ({lab / 'site'})" in line
    assert "della (" in line and "local (" in line


def test_info_shows_the_search_path_the_choices_and_where_they_came_from(tmp_path, no_user_config):
    lab, cd = tmp_path / "lab", tmp_path / "cd"
    _profile(lab, "shared", "defaults: [local, _self_]\nname: shared\n")
    cd.mkdir()
    (no_user_config / "user").mkdir(parents=True)
    (no_user_config / "user" / "default.yaml").write_text("defaults:\n  - override /site: shared\n")
    proc = run_agent("--info", "-cd", str(cd), "policy=stop", env={"CLUSTER_AGENT_CONFIG_PATH": str(lab)})
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    order = [out.index(str(cd)), out.index(str(no_user_config)), out.index(str(lab)), out.index("shipped")]
    assert order == sorted(order), out
    assert "site=shared" in out and str(lab / "site" / "shared.yaml") in out
    assert f"chosen by the defaults file {no_user_config / 'user' / 'default.yaml'}" in out
    assert "policy=stop" in out and "chosen by the command line" in out
    assert "consumer=inspect" in out and "chosen by the default in config.yaml" in out


def test_command_line_beats_the_defaults_file(tmp_path, no_user_config):
    (no_user_config / "user").mkdir(parents=True)
    (no_user_config / "user" / "default.yaml").write_text("defaults:\n  - override /policy: stop\njobs: 3\n")
    cfg = __import__("yaml").safe_load(run_agent("--cfg", "job").stdout)
    assert cfg["policy"]["mode"] == "stop" and cfg["jobs"] == 3
    cfg = __import__("yaml").safe_load(run_agent("policy=continue", "jobs=1", "--cfg", "job").stdout)
    assert cfg["policy"]["mode"] == "continue" and cfg["jobs"] == 1


def test_a_defaults_file_setting_group_keys_is_refused(no_user_config):
    """The README's old example (`policy: {mode: stop}`) outranked policy=continue: refused, with the fix."""
    (no_user_config / "user").mkdir(parents=True)
    (no_user_config / "user" / "default.yaml").write_text("# @package _global_\npolicy:\n  mode: stop\n")
    line = assert_one_error_line(run_agent("policy=continue", "action=plan"))
    assert "override /policy: NAME" in line and "default.yaml" in line


def test_search_path_folder_may_not_hold_its_own_config_yaml(tmp_path):
    cd = tmp_path / "cd"
    cd.mkdir()
    (cd / "config.yaml").write_text("jobs: 9\n")
    line = assert_one_error_line(run_agent("-cd", str(cd), "action=plan"))
    assert str(cd / "config.yaml") in line


def test_missing_config_dir_is_one_line(tmp_path):
    line = assert_one_error_line(run_agent("--config-dir", str(tmp_path / "nope"), "action=plan"))
    assert "--config-dir" in line and "no such folder" in line


def test_hydra_searchpath_is_honoured_below_the_shipped_conf(tmp_path):
    extra = tmp_path / "extra"
    _profile(extra, "far", "defaults: [local, _self_]\nname: far\nhf_cache: /far/hf\n")
    doc = _plan(f"hydra.searchpath=[file://{extra}]", "site=far")
    assert doc["hf_cache"] == "/far/hf"


def test_the_gate_follows_the_search_path(tmp_path, caches, no_user_config):
    """A user profile moves the manifest (site.state_dir): the gate must look where the pre-build wrote."""
    summary = _summary(tmp_path)
    state = tmp_path / "state"
    _profile(no_user_config, "mylab", f"defaults: [local, _self_]\nname: mylab\nstate_dir: {state}\n")
    (no_user_config / "user").mkdir(parents=True)
    (no_user_config / "user" / "default.yaml").write_text("defaults:\n  - override /site: mylab\n")
    proc = run_agent(f"experiment={summary}", "consumer=datasets", "verify=false")
    assert proc.returncode == 0, proc.stderr
    assert (state / ".cluster-agent" / "manifest.json").is_file()
    gate = run_agent(f"experiment={summary}", "action=check", "output=json")
    assert gate.returncode == 0, gate.stderr
    assert json.loads(gate.stdout)["manifest"] == str(state / ".cluster-agent" / "manifest.json")
