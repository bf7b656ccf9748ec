"""Launch an experiment's scaffolded cells as they are, each gated on its own call.

``recipes/submit.py --cells EXPERIMENT_DIR [--after JOB]``: every ``<run>/eval/<cell>/
cell.slurm`` is submitted at once (no stagger, no queue cap). Each is submitted as a gated
copy rendered into the experiment's state folder: the cell's own text — its ``#SBATCH``
lines, setup, ``cd <cell>`` and ``inspect eval`` — with one gate block inserted just before
the ``inspect eval`` statement (after the setup that puts ``cluster-agent`` on PATH and the
``cd``). The gate (``cluster-agent action=check cell=<cell> output=shell``) checks that the
pre-build covered exactly the call this cell makes, then prints the caches' environment,
which the block exports; exit 3 ends the job before inspect-ai could write its cache
unlocked. The user's cell.slurm files are never modified.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

from agent.cells import CellCall, read_cell, read_slurm
from agent.errors import CellError
from agent.launcher import LaunchError

GATE_MARK = "# cluster-agent gate (recipes/submit.py --cells)"


def gate_block(cell: str) -> str:
    """The lines inserted before `inspect eval`; docs/slurm.md shows the one-line form."""
    q = shlex.quote(cell)
    return (
        f"{GATE_MARK}: the pre-build must cover this cell's exact call; exit 3 ends the\n"
        "# job before inspect-ai can write its cache unlocked. Then the caches' environment.\n"
        f"env_lines=$(cluster-agent action=check cell={q} output=shell) || {{\n"
        "    status=$?\n"
        '    [ "$status" -eq 127 ] && echo "cluster-agent: error: cluster-agent is not on PATH inside the job; '
        'activate its environment before this line" >&2\n'
        f'    echo "cell {cell} not run: the launch gate refused it (exit $status)" >&2\n'
        '    exit "$status"\n'
        "}\n"
        'eval "$env_lines"\n'
    )


def render_gated(call: CellCall) -> str:
    """cell.slurm's text with the gate block before its `inspect eval` statement."""
    text = call.slurm.read_text(encoding="utf-8")
    if GATE_MARK in text:
        raise CellError(f"{call.slurm}: already holds a cluster-agent gate; submit it with sbatch directly")
    line = read_slurm(call.slurm).inspect_line
    lines = text.splitlines(keepends=True)
    return "".join(lines[:line - 1]) + gate_block(str(call.cell)) + "\n" + "".join(lines[line - 1:])


def gated_path(state: Path, call: CellCall) -> Path:
    """<state>/cells/<run>/<cell>.slurm: one gated copy per cell, beside the manifest."""
    return state / "cells" / call.run / f"{call.cell.name}.slurm"


@dataclass
class Submission:
    call: CellCall
    script: Path  # the gated copy
    argv: List[str]  # the sbatch command
    job_id: Optional[str] = None


def plan(experiment: Path, state: Path, after: Optional[str]) -> List[Submission]:
    """Every cell (each read and checked: a cell that contradicts itself stops everything),
    with its gated copy's path and sbatch command."""
    from agent.cells import cell_files

    files = cell_files(experiment)
    if not files:
        raise CellError(f"--cells {experiment}: no scaffolded cells (*/eval/*/eval.yaml with cell.slurm); "
                        "scaffold the experiment first, or submit from the summary without --cells")
    subs = []
    scripts: dict = {}
    for eval_yaml in files:
        call = read_cell(eval_yaml, scripts)
        script = gated_path(state, call)
        argv = ["sbatch", "--parsable"]
        if after:
            # a failed pre-build cancels the cells at once instead of leaving them pending
            argv += [f"--dependency=afterok:{after}", "--kill-on-invalid-dep=yes"]
        subs.append(Submission(call, script, argv + [str(script)]))
    return subs


def write_gated(sub: Submission) -> None:
    """Written to a temporary name and renamed into place (sbatch reads it at once)."""
    text = render_gated(sub.call)
    sub.script.parent.mkdir(parents=True, exist_ok=True)
    tmp = sub.script.with_name(f".{sub.script.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.chmod(tmp, 0o755)
    os.replace(tmp, sub.script)


def precheck(subs: Sequence[Submission]) -> List[str]:
    """Run each cell's gate now (what each job runs first); the refusals, one line each."""
    refused = []
    for sub in subs:
        proc = subprocess.run(["cluster-agent", "action=check", f"cell={sub.call.cell}", "output=shell"],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
            refused.append(lines[-1] if lines else f"cell {sub.call.cell}: the gate exited {proc.returncode}")
    return refused


def submit(subs: Sequence[Submission]) -> None:
    """sbatch every gated copy, one right after the other, from its cell folder."""
    exe = shutil.which("sbatch")
    if exe is None:
        raise LaunchError("sbatch not found on PATH: recipes/submit.py --cells needs the SLURM client tools "
                          "(run it on a login node)")
    for sub in subs:
        proc = subprocess.run([exe, *sub.argv[1:]], capture_output=True, text=True, cwd=str(sub.call.cell))
        if proc.returncode != 0:
            done = [s.job_id for s in subs if s.job_id]
            reason = " ".join((proc.stderr or proc.stdout).split()) or f"exit {proc.returncode}"
            raise LaunchError(f"sbatch refused {sub.script}: {reason}"
                              + (f" ({len(done)} cells already submitted: {' '.join(done)})" if done else ""))
        sub.job_id = proc.stdout.strip().split(";")[0]
