"""recipes/submit.py --cells: every scaffolded cell.slurm at once, each as a gated copy.

The rendered copy is compared with tests/reference/cell_gated.slurm (<TMP> for the test's
folder; UPDATE_REFERENCE=1 to accept an intended change). SLURM itself is not started
here (the real-cluster run is the lead's test): where a test needs `sbatch`, the gate
(`cluster-agent action=check cell=`, the lead's side of issue 10) or the cell's model, a
small stand-in script on PATH records what it was called with; each says why.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
from conftest import REPO

from agent import cells, cellsubmit
from scaffold import Scaffold, build

SUBMIT = REPO / "recipes" / "submit.py"
REFERENCE = REPO / "tests" / "reference" / "cell_gated.slurm"


@pytest.fixture
def scaffold(tmp_path: Path) -> Scaffold:
    return build(tmp_path)


def stub(folder: Path, name: str, body: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)


def submit(args: List[str], bin_dir: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}")
    return subprocess.run([sys.executable, str(SUBMIT), *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=300)


def test_gated_copy_matches_reference(scaffold: Scaffold, tmp_path: Path) -> None:
    call = cells.read_cell(scaffold.cell("run_a", "cap_validation_epoch1"))
    text = cellsubmit.render_gated(call)
    normalised = text.replace(str(tmp_path), "<TMP>")
    if os.environ.get("UPDATE_REFERENCE") == "1":
        REFERENCE.write_text(normalised)
    assert normalised == REFERENCE.read_text(), "cell_gated.slurm differs (UPDATE_REFERENCE=1 to accept)"
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)
    original = call.slurm.read_text()
    # the cell's own lines, all kept and in order; the gate comes after the cd, before inspect eval
    assert [ln for ln in text.splitlines() if ln not in cellsubmit.gate_block(str(call.cell)).splitlines()
            and ln] == [ln for ln in original.splitlines() if ln]
    assert text.index(f"cd {call.cell}\n") < text.index("action=check cell=") < text.index("inspect eval")
    assert call.slurm.read_text() == original  # the user's file is never modified


def test_dry_run_lists_every_cell_and_writes_nothing(scaffold: Scaffold, tmp_path: Path) -> None:
    proc = submit(["--cells", str(scaffold.experiment), "--dry-run", "--after", "4321"], tmp_path / "bin", tmp_path)
    assert proc.returncode == 0, proc.stderr
    headers = [ln for ln in proc.stdout.splitlines() if ln.startswith("# ==> ")]
    state = scaffold.experiment / ".cluster-agent" / "cells"
    assert headers == [f"# ==> {state}/{c.run}/{c.cell.name}.slurm <==" for c in cells.discover(scaffold.experiment)]
    assert len(headers) == 14
    sbatch = [ln for ln in proc.stdout.splitlines() if ln.startswith("# sbatch ")]
    assert len(sbatch) == 14 and all("--dependency=afterok:4321 --kill-on-invalid-dep=yes" in ln for ln in sbatch)
    assert proc.stdout.count("cluster-agent action=check cell=") == 14
    # the one cell whose call will fail is named on stderr, once
    warnings = [ln for ln in proc.stderr.splitlines() if ln.startswith("submit: warning: ")]
    assert len(warnings) == 1 and "cap_tilde_epoch1: data_path '~/cruijff-data/words.json' starts with '~'" in warnings[0]
    assert not (scaffold.experiment / ".cluster-agent").exists()


# Stand-ins, because the real ones cannot run here: `sbatch` (the single SLURM cluster
# belongs to the lead's tests) records its arguments and folder and prints a job id.
FAKE_SBATCH = 'n=$(($(ls "$RECORD" 2>/dev/null | wc -l) + 1)); printf "%s\\n" "$PWD" "$@" > "$RECORD/$n"; echo $((900 + n))\n'


def test_submits_every_cell_at_once_from_its_folder(scaffold: Scaffold, tmp_path: Path) -> None:
    record = tmp_path / "record"
    record.mkdir()
    stub(tmp_path / "bin", "sbatch", f'RECORD={record}\n' + FAKE_SBATCH)
    proc = submit(["--cells", str(scaffold.experiment), "--no-check", "--json"], tmp_path / "bin", tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert [j["job_id"] for j in doc["jobs"]] == [str(901 + i) for i in range(14)]
    calls: Dict[str, List[str]] = {}
    for f in sorted(record.iterdir(), key=lambda p: int(p.name)):
        cwd, *argv = f.read_text().splitlines()
        calls[cwd] = argv  # the physical folder: sbatch's cwd is set by chdir, which resolves symlinks
    assert sorted(calls) == sorted(os.path.realpath(c) for c in scaffold.cells.values())  # each from its cell
    for job in doc["jobs"]:
        argv = calls[os.path.realpath(job["cell"])]
        assert argv == ["--parsable", job["script"]]
        assert Path(job["script"]).read_text() == cellsubmit.render_gated(cells.read_cell(job["cell"]))
    assert "submit: 14 cells submitted at once" in proc.stderr


def test_gate_refusal_submits_nothing(scaffold: Scaffold, tmp_path: Path) -> None:
    # the gate's `cell=` form is the lead's side of issue 10: a stand-in refusing one cell
    stub(tmp_path / "bin", "cluster-agent",
         'case "$2" in *cap_run) echo "GATE_REFUSED: ${2#cell=}: not pre-built" >&2; exit 3;; esac; exit 0\n')
    stub(tmp_path / "bin", "sbatch", f"touch {tmp_path}/sbatch-ran; echo 1\n")
    proc = submit(["--cells", str(scaffold.experiment)], tmp_path / "bin", tmp_path)
    assert proc.returncode == 3 and proc.stdout == ""
    refused = [ln for ln in proc.stderr.splitlines() if ln.startswith("GATE_REFUSED: ")]
    assert refused == [f"GATE_REFUSED: {scaffold.cell('base', 'cap_run')}: not pre-built"]
    assert "nothing submitted: the gate refused 1 of 14 cells" in proc.stderr
    assert not (tmp_path / "sbatch-ran").exists() and not (scaffold.experiment / ".cluster-agent" / "cells").exists()


def test_bad_cells_and_options_are_one_line(scaffold: Scaffold, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "experiment_summary.yaml").write_text((scaffold.summary).read_text())
    for args, message in [
        (["--cells", str(empty)], "no scaffolded cells"),
        (["--cells", str(scaffold.experiment), "--model", "x"], "--model: not with --cells"),
    ]:
        proc = submit(args, tmp_path / "bin", tmp_path)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("submit: error: "), proc.stderr
        assert message in lines[0]
    slurm = scaffold.cell("run_b", "cap_run_epoch1") / "cell.slurm"
    slurm.write_text(slurm.read_text().replace("words_b_eval.json", "words.json"))
    stub(tmp_path / "bin", "sbatch", f"touch {tmp_path}/sbatch-ran; echo 1\n")
    proc = submit(["--cells", str(scaffold.experiment), "--no-check"], tmp_path / "bin", tmp_path)
    assert proc.returncode == 2 and f"{slurm}:" in proc.stderr and "but eval.yaml data_path is" in proc.stderr
    assert not (tmp_path / "sbatch-ran").exists()


def test_gated_copy_runs_gate_then_env_then_inspect(tmp_path: Path) -> None:
    """The gated copy run by bash as the job would (no module/conda lines here). Stand-ins:
    the gate (lead's side) prints an export or refuses; `inspect` records its environment,
    because the cell's hf/ model needs weights this machine does not have."""
    s = build(tmp_path, setup=())
    call = cells.read_cell(s.cell("base", "organism"))
    script = tmp_path / "gated.sh"
    script.write_text(cellsubmit.render_gated(call))
    bin_dir = tmp_path / "bin"
    stub(bin_dir, "inspect", f'echo "$PWD|$HF_HUB_OFFLINE|$XDG_CACHE_HOME|$*" > {tmp_path}/inspect-ran\n')
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    env.pop("XDG_CACHE_HOME", None)

    stub(bin_dir, "cluster-agent", 'echo "GATE_REFUSED: not pre-built" >&2; exit 3\n')
    refused = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert refused.returncode == 3 and not (tmp_path / "inspect-ran").exists()
    assert f"cell {call.cell} not run: the launch gate refused it (exit 3)" in refused.stderr

    stub(bin_dir, "cluster-agent", f'[ "$2" = "cell={call.cell}" ] || exit 9; echo "export XDG_CACHE_HOME={tmp_path}/xdg"\n')
    ok = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    pwd, offline, xdg, argv = (tmp_path / "inspect-ran").read_text().strip().split("|")
    assert (pwd, offline, xdg) == (str(call.cell), "1", f"{tmp_path}/xdg")
    assert argv.startswith(f"eval {call.task_script} ") and f"data_path={call.data_files}" in argv


def test_the_one_line_in_docs_gates_a_users_own_template(tmp_path: Path) -> None:
    """docs/slurm.md's line, run by bash: a refusal ends the script with the gate's code
    before `inspect eval`; a pass exports what the gate printed (gate stand-in: lead's side)."""
    docs = (REPO / "docs" / "slurm.md").read_text()
    (line,) = [ln for ln in docs.splitlines() if ln.startswith("env_lines=$(cluster-agent action=check cell=")]
    bin_dir = tmp_path / "bin"
    cell = tmp_path / "cell"
    cell.mkdir()
    script = tmp_path / "template.sh"
    script.write_text(f"cd {cell}\n{line}\necho \"inspect eval ran with XDG=$XDG_CACHE_HOME\"\n")
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    stub(bin_dir, "cluster-agent", 'echo "GATE_REFUSED: ${2}" >&2; exit 3\n')
    refused = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env)
    assert refused.returncode == 3 and refused.stdout == "" and f"GATE_REFUSED: cell={cell}" in refused.stderr
    stub(bin_dir, "cluster-agent", f'[ "$2" = "cell={cell}" ] || exit 9; echo "export XDG_CACHE_HOME=/x/y"\n')
    ok = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env)
    assert ok.returncode == 0 and ok.stdout == "inspect eval ran with XDG=/x/y\n", ok.stderr
