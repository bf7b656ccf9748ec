"""Shell completion as a user meets it: the bash/zsh function from --shell-completion
install=..., run by the real shell with COMP_LINE as the shell sets it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import CLI


def _complete(shell: str, line: str, cwd: Path) -> list:
    script = ('eval "$(cluster-agent --shell-completion install=%s)"\n'
              'COMP_LINE=%r; COMP_POINT=${#COMP_LINE}\n'
              '_cluster_agent_complete\nprintf "%%s\\n" "${COMPREPLY[@]}"\n') % (shell, line)
    env = dict(os.environ, PATH=f"{Path(CLI).parent}{os.pathsep}{os.environ['PATH']}")
    args = [shell, "-f", "-c", script] if shell == "zsh" else [shell, "-c", script]
    out = subprocess.run(args, capture_output=True, text=True, env=env, cwd=cwd, timeout=60)
    assert out.returncode == 0, out.stderr
    return [w for w in out.stdout.splitlines() if w]


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_groups_options_keys_and_paths(shell, tmp_path, no_user_config):
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} not installed")
    (no_user_config / "site").mkdir(parents=True)
    (no_user_config / "site" / "mylab.yaml").write_text("defaults: [local, _self_]\nname: mylab\n")
    (tmp_path / "sweeps" / "exp1").mkdir(parents=True)
    (tmp_path / "sweeps" / "exp1" / "experiment_summary.yaml").write_text("x: 1\n")
    # bash splits words at '=' (COMP_WORDBREAKS): it gets what follows it; zsh gets the whole word
    strip = (lambda w: w.split("=", 1)[1]) if shell == "bash" else (lambda w: w)
    assert set(_complete(shell, "cluster-agent si", tmp_path)) == {"site=", "site."}
    assert set(_complete(shell, "cluster-agent site=", tmp_path)) == {strip(f"site={o}") for o in ("della", "local", "mylab")}
    assert _complete(shell, "cluster-agent policy=co", tmp_path) == [strip("policy=continue")]
    assert _complete(shell, "cluster-agent site.slurm.acc", tmp_path) == ["site.slurm.account="]
    assert _complete(shell, "cluster-agent policy.mode=s", tmp_path) == [strip("policy.mode=stop")]
    assert _complete(shell, "cluster-agent experiment=sweeps/", tmp_path) == [strip("experiment=sweeps/exp1/")]
    assert _complete(shell, "cluster-agent experiment=sweeps/exp1/", tmp_path) == \
        [strip("experiment=sweeps/exp1/experiment_summary.yaml")]
    assert "--multirun" in _complete(shell, "cluster-agent --mu", tmp_path)


def test_unknown_shell_is_one_line():
    proc = subprocess.run([CLI, "--shell-completion", "install=fish"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "install=bash" in proc.stderr
