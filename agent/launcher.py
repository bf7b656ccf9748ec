"""SLURM launching (DESIGN §9): the pre-build as a job, the eval jobs as one gated array.

Both are plain sbatch scripts rendered from the templates in ``recipes/`` and submitted
with ``sbatch --parsable``, so what runs is a file a user can read, re-submit by hand and
diff against the saved references in tests. Nothing here imports `datasets`.

- ``submit_prebuild`` (``cluster-agent launcher=slurm ...``): one job running the same
  command with ``launcher=local``; with more datasets than ``launcher.array_threshold``,
  an array with one task per dataset (``entry=$SLURM_ARRAY_TASK_ID``) followed by one
  job (``afterany`` on the array) that re-runs the whole pre-build — every entry is then
  unchanged, so it only writes the manifest with a single decision. The printed job id
  is the last job's: chain the eval array on it with ``--dependency=afterok:<id>``.
- ``render_eval`` / ``submit_evals`` (``recipes/submit.py``): every eval job of the
  experiment as one array, each task gated by ``cluster-agent action=check task=...``.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import string
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, TextIO, Tuple

from agent.config import AgentConfig, SiteConfig, _bundled
from agent.errors import EXIT_PROCEED, LaunchError, SummaryError  # noqa: F401 - LaunchError re-exported

RECIPES = _bundled("recipes")
PREBUILD_TEMPLATE = "prebuild_job.sbatch"
EVAL_TEMPLATE = "eval_job.sbatch"
# scontrol job states after which an afterok dependency can never be satisfied
_DEAD_STATES = ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED")


class _Template(string.Template):
    delimiter = "@"  # bash owns `$`


def render(template: str, **values: str) -> str:
    """Fill a recipes/ template; every @{name} must be given (KeyError names the missing one)."""
    text = (RECIPES / template).read_text(encoding="utf-8")
    return _Template(text).substitute(**values)


def directives(site: SiteConfig, *, job_name: str, output: str, chdir: str, array: Optional[str] = None,
               dependency: Optional[str] = None) -> str:
    """#SBATCH lines from the site profile (partition, account, time, mem, cpus) and the job."""
    slurm = site.slurm
    lines = [f"--job-name={job_name}"]
    if slurm.partition:
        lines.append(f"--partition={slurm.partition}")
    if slurm.account:
        lines.append(f"--account={slurm.account}")
    lines += [f"--time={slurm.time}", f"--mem={slurm.mem}", f"--cpus-per-task={slurm.cpus_per_task}",
              "--nodes=1", "--ntasks=1", f"--output={output}", f"--chdir={chdir}"]
    if array:
        lines.append(f"--array={array}")
    if dependency:
        # a failed parent cancels the dependants at once instead of leaving them pending
        lines += [f"--dependency={dependency}", "--kill-on-invalid-dep=yes"]
    return "\n".join(f"#SBATCH {line}" for line in lines)


def setup_block(site: SiteConfig) -> str:
    if not site.slurm.setup:
        return "# (site.slurm.setup is empty: the job inherits the environment sbatch exports)"
    return "\n".join(site.slurm.setup)


def job_folder(cfg: AgentConfig) -> Path:
    """Where rendered scripts and job output files go: launcher.folder or <state dir>/logs/slurm."""
    from agent import paths

    return paths.for_config(cfg).job_folder


def write_script(folder: Path, stem: str, text: str) -> Path:
    """Written to a temporary name and renamed into place (sbatch may read it at once)."""
    from agent.manifest import write_text_atomic

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.sbatch"
    write_text_atomic(path, text, mode=0o755)
    return path


def sbatch(script: Path, cwd: Optional[Path] = None) -> str:
    """Submit; return the job id (`sbatch --parsable` prints `id` or `id;cluster`)."""
    exe = shutil.which("sbatch")
    if exe is None:
        raise LaunchError("sbatch not found on PATH: launcher=slurm and recipes/submit.py need the SLURM "
                          "client tools (run them on a login node), or use launcher=local")
    proc = subprocess.run([exe, "--parsable", str(script)], capture_output=True, text=True, cwd=cwd)
    if proc.returncode != 0:
        reason = " ".join((proc.stderr or proc.stdout).split()) or f"exit {proc.returncode}"
        try:  # a refused job leaves nothing behind: the script was never a job
            script.unlink()
        except OSError:
            pass
        if any(s in reason for s in _UNREACHABLE):
            raise LaunchError(f"sbatch could not reach the SLURM controller ({reason}): the cluster's slurmctld is "
                              "down or unreachable from here, nothing in the site profile is wrong; try again when "
                              "`sinfo` answers, or use launcher=local")
        raise LaunchError(f"sbatch refused the job: {reason}; check the site profile's site.slurm.* values "
                          "(partition, account, time, mem, cpus_per_task)")
    return proc.stdout.strip().split(";")[0]


# what sbatch says when no controller answers (Slurm 22-24): not the job's fault
_UNREACHABLE = ("Unable to contact slurm controller", "Socket timed out", "Connection refused",
                "Zero Bytes were transmitted or received", "Communication connection failure")


# --- the pre-build as a job ---------------------------------------------------------------


def job_args(argv: Sequence[str], entry: bool = False) -> str:
    """The user's overrides for the job: launcher=local (the job must not submit again);
    an array task gets entry=$SLURM_ARRAY_TASK_ID instead of any entry= of the user's."""
    dropped = ("launcher", "entry") if entry else ("launcher",)
    keep = [a for a in argv if not a.split("=", 1)[0].lstrip("+").split(".")[0] in dropped]
    keep.append("launcher=local")
    words = [shlex.quote(a) for a in keep]
    if entry:
        words.append('entry="$SLURM_ARRAY_TASK_ID"')
    return " ".join(words)


def read_summary(cfg: AgentConfig) -> Any:
    """The experiment summary as the pre-build reads it (eval_condition folders included)."""
    from agent import paths
    from agent.summary import read_summary as read

    summary_path = paths.for_config(cfg).summary
    return read(summary_path, paths.conditions_dir(cfg, summary_path), cfg.conditions.pattern)


def plan_size(cfg: AgentConfig) -> Tuple[Path, int]:
    """(summary path, number of entries) without importing datasets; summary errors surface here."""
    summary = read_summary(cfg)
    return summary.path, len(_plan(cfg, summary, cfg.task))


def _plan(cfg: AgentConfig, summary: Any, task: Optional[str] = None) -> list:
    """The summary's entries as the pre-build plans them for this consumer (lm-eval
    resolves its tasks itself), without importing datasets for the others."""
    from agent import consumers
    from agent.plan import make_plan

    own = consumers.get(cfg.consumer.kind.name).plan(summary, task)
    return own if own is not None else make_plan(summary, cfg.consumer.split, cfg.consumer.default_field, task)


def render_prebuild(cfg: AgentConfig, argv: Sequence[str], n_entries: int, folder: Path, cwd: Path,
                    array_job: str = "<array job id>") -> List[Tuple[str, str]]:
    """[(stem, script)]: one job, or (above launcher.array_threshold) an array + a final job."""
    name = f"prebuild-{cfg.site.name}"
    if n_entries <= cfg.launcher.array_threshold or cfg.entry is not None:
        return [("prebuild", render(
            PREBUILD_TEMPLATE, site=cfg.site.name, setup=setup_block(cfg.site), what="(all datasets)",
            args=job_args(argv), directives=directives(cfg.site, job_name=name, output=str(folder / "prebuild-%j.out"),
                                                       chdir=str(cwd))))]
    array = render(
        PREBUILD_TEMPLATE, site=cfg.site.name, setup=setup_block(cfg.site),
        what=f"of dataset ${{SLURM_ARRAY_TASK_ID}} of {n_entries}", args=job_args(argv, entry=True),
        directives=directives(cfg.site, job_name=f"{name}-array", output=str(folder / "prebuild-%A_%a.out"),
                              chdir=str(cwd), array=f"0-{n_entries - 1}"))
    final = render(
        PREBUILD_TEMPLATE, site=cfg.site.name, setup=setup_block(cfg.site),
        what=f"(all {n_entries} datasets: writes the manifest after the array)", args=job_args(argv),
        directives=directives(cfg.site, job_name=name, output=str(folder / "prebuild-%j.out"), chdir=str(cwd),
                              dependency=f"afterany:{array_job}"))
    return [("prebuild-array", array), ("prebuild", final)]


def submit_prebuild(cfg: AgentConfig, argv: Sequence[str], stdout: TextIO = sys.stdout,
                    stderr: TextIO = sys.stderr) -> int:
    """`cluster-agent launcher=slurm`: submit the pre-build; print the job id to chain on."""
    summary, n_entries = plan_size(cfg)
    folder = job_folder(cfg)
    cwd = Path.cwd()
    first = render_prebuild(cfg, argv, n_entries, folder, cwd)
    submitted: List[Dict[str, str]] = []
    if len(first) == 1:
        script = write_script(folder, first[0][0], first[0][1])
        submitted.append({"job_id": sbatch(script, cwd), "script": str(script)})
    else:
        array_script = write_script(folder, "prebuild-array", first[0][1])
        array_id = sbatch(array_script, cwd)
        submitted.append({"job_id": array_id, "script": str(array_script)})
        stem, text = render_prebuild(cfg, argv, n_entries, folder, cwd, array_job=array_id)[1]
        script = write_script(folder, stem, text)
        submitted.append({"job_id": sbatch(script, cwd), "script": str(script)})
    job_id = submitted[-1]["job_id"]
    how = (f"array job {submitted[0]['job_id']} (one task per dataset, {n_entries}) then job {job_id} "
           "(writes the manifest)" if len(submitted) > 1 else f"job {job_id} ({n_entries} datasets)")
    from agent import paths
    from agent.logs import write_line

    write_line("PREBUILD_SUBMITTED", f"{how}; output in {folder}; chain the eval jobs on it: "
               f"recipes/submit.py --after {job_id}", paths.for_config(cfg).log_file, stderr)
    if cfg.output.name == "json":
        stdout.write(json.dumps({"job_id": job_id, "array_job_id": submitted[0]["job_id"] if len(submitted) > 1 else None,
                                 "entries": n_entries, "folder": str(folder), "jobs": submitted}) + "\n")
    else:
        stdout.write(f"{job_id}\n")
    return EXIT_PROCEED


# --- the eval jobs as one gated array ---------------------------------------------------------


@dataclass
class EvalJob:
    task: str
    run: Optional[str]
    command: str


def _matrix(raw: Any, path: Path, names: List[str]) -> Optional[List[Tuple[Optional[str], str]]]:
    """(run, task) pairs from evaluation.matrix (cruijff_kit layout), or None without one."""
    matrix = (raw.get("evaluation") or {}).get("matrix") if isinstance(raw, dict) else None
    if matrix is None:
        return None
    if not isinstance(matrix, list):
        raise SummaryError(f"{path}: 'evaluation.matrix' must be a list of {{run, tasks}} rows")
    pairs: List[Tuple[Optional[str], str]] = []
    for i, row in enumerate(matrix):
        if not isinstance(row, dict) or not isinstance(row.get("tasks"), list):
            raise SummaryError(f"{path}: 'evaluation.matrix[{i}]' needs run and a list of tasks")
        for task in row["tasks"]:
            if task not in names:
                raise SummaryError(f"{path}: evaluation.matrix[{i}] names task '{task}', which is not in "
                                   f"evaluation.tasks; tasks: {', '.join(names)}")
            pairs.append((None if row.get("run") is None else str(row["run"]), str(task)))
    return pairs


# the placeholders that need the entries' calls (the others come from the summary)
_CALL_PLACEHOLDERS = ("builder", "data_files", "field", "split", "python_call", "field_arg", "split_arg")


def default_command(consumer: str, model: Optional[str]) -> str:
    """The consumer step when --command is not given."""
    from agent import consumers

    return consumers.get(consumer).eval_command(model)


def _python_call(call: Any) -> str:
    """datasets.load_dataset(...) with double-quoted literals (it goes inside a '...' shell word)."""
    from agent import consumers

    return consumers.get("datasets").python(call, quote=json.dumps)


def eval_jobs(cfg: AgentConfig, command: Optional[str] = None, model: Optional[str] = None,
              only: Optional[Sequence[str]] = None) -> Tuple[Path, List[EvalJob]]:
    """Every eval job of the experiment (matrix rows x tasks, else one per task), in order."""
    import yaml

    from agent import paths as locations

    paths = locations.for_config(cfg)
    summary = read_summary(cfg)
    template = command or default_command(cfg.consumer.kind.name, model)
    # the calls only when the template names them (lm-eval's plan indexes its tasks: ~8 s)
    uses_call = any(f"{{{k}}}" in template for k in _CALL_PLACEHOLDERS)
    entries = _plan(cfg, summary) if uses_call else []
    call_of = {task: entry.call for entry in entries for task in entry.tasks}
    task_of = {t.name: t for t in summary.tasks}
    raw = yaml.safe_load(paths.summary.read_text(encoding="utf-8"))
    scripts = {str(t.get("name")): t.get("script") for t in raw["evaluation"]["tasks"] if isinstance(t, dict)}
    names = [t.name for t in summary.tasks]
    pairs = _matrix(raw, paths.summary, names) or [(None, name) for name in names]
    if only:
        unknown = [t for t in only if t not in names]
        if unknown:
            raise SummaryError(f"--only {','.join(unknown)}: not a task of {paths.summary}; tasks: {', '.join(names)}")
        pairs = [p for p in pairs if p[1] in only]
    jobs = []
    for index, (run, task) in enumerate(pairs):
        call = call_of.get(task)
        script = scripts.get(task)
        if "{script}" in template and not script:
            raise SummaryError(f"task '{task}' has no script in {paths.summary}: add script: PATH or pass --command")
        lm_task = task_of[task].lm_eval_task
        if "{lm_eval_task}" in template and not lm_task:
            raise SummaryError(f"task '{task}' has no lm_eval_task in {paths.summary}: add lm_eval_task: NAME "
                               "or pass --command")
        include = task_of[task].include_path
        values = {
            "task": task, "run": run or "", "index": str(index), "builder": call.builder if call else "",
            "data_files": call.shown if call else "", "field": (call.field or "") if call else "",
            "split": (call.split or "") if call else "", "manifest": str(paths.manifest), "model": model or "",
            # as written: relative paths resolve in the job's cwd, the summary's folder (render_eval)
            "script": os.path.normpath(script) if script else "", "lm_eval_task": lm_task or "",
            "python_call": (f"import datasets; ds = {_python_call(call)}; print(\"rows:\", ds.num_rows)"
                            if call else ""),
        }
        quoted = {k: shlex.quote(v) for k, v in values.items()}
        field = call.field if call else None
        quoted["field_arg"] = f"-T field={shlex.quote(field)}" if field else ""
        quoted["split_arg"] = f"-T split={shlex.quote(field)}" if field else ""  # field=split in the task
        quoted["include_path_arg"] = f"--include_path {shlex.quote(include)}" if include else ""
        try:
            text = template.format(**quoted).strip()
        except (KeyError, IndexError, ValueError) as exc:
            raise LaunchError(f"--command {template!r}: unknown placeholder {exc}; use "
                              f"{', '.join('{' + k + '}' for k in sorted(quoted))}") from None
        jobs.append(EvalJob(task, run, text))
    if not jobs:
        raise SummaryError(f"{paths.summary}: no eval jobs to submit")
    return paths.manifest, jobs


def render_eval(cfg: AgentConfig, manifest: Path, jobs: List[EvalJob], folder: Path, cwd: Path,
                after: Optional[str] = None, job_name: Optional[str] = None) -> str:
    """The array script: one index per job, all submitted at once (no % throttle).

    `cwd` is the jobs' --chdir; recipes/submit.py uses the summary's folder, so that the
    summary's relative paths (task scripts) work as written and outputs land beside it."""
    name = job_name or f"eval-{cfg.site.name}"
    return render(
        EVAL_TEMPLATE, site=cfg.site.name, setup=setup_block(cfg.site), manifest=shlex.quote(str(manifest)),
        consumer=cfg.consumer.kind.name,
        tasks="\n".join(f"    {shlex.quote(j.task)}  # {i}{' ' + j.run if j.run else ''}" for i, j in enumerate(jobs)),
        commands="\n".join(f"        {i}) {j.command} ;;" for i, j in enumerate(jobs)),
        directives=directives(cfg.site, job_name=name, output=str(folder / "eval-%A_%a.out"), chdir=str(cwd),
                              array=f"0-{len(jobs) - 1}", dependency=f"afterok:{after}" if after else None))


def job_states(job_id: str) -> Optional[List[str]]:
    """JobState of each task of a job (scontrol; no accounting needed), None if SLURM does not know it."""
    exe = shutil.which("scontrol")
    if exe is None:
        raise LaunchError("scontrol not found on PATH: run recipes/submit.py where the SLURM client tools are")
    proc = subprocess.run([exe, "-o", "show", "job", job_id], capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    return [word.split("=", 1)[1] for line in proc.stdout.splitlines() for word in line.split()
            if word.startswith("JobState=")]


def check_dependency(job_id: str) -> None:
    """SLURM treats afterok on an unknown (typo, purged) job id as satisfied: refuse that."""
    if not job_id.isdigit():
        raise LaunchError(f"--after {job_id}: give the numeric job id printed by cluster-agent launcher=slurm")
    states = job_states(job_id)
    if not states:
        raise LaunchError(f"--after {job_id}: SLURM does not know this job (a typo, or it ended long ago); "
                          "SLURM would treat the dependency as satisfied: drop --after to check the manifest now")
    dead = sorted({s for s in states if s in _DEAD_STATES})
    if dead:
        raise LaunchError(f"--after {job_id}: that job ended {', '.join(dead)}, so the eval jobs could never "
                          "start; read its output file, fix the cause and run the pre-build again")
