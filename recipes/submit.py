#!/usr/bin/env python3
"""Submit every eval job of an experiment at once: ONE SLURM job array, no stagger.

    python recipes/submit.py [options] [cluster-agent overrides: experiment=... site=... consumer=...]

1. Checks the whole manifest with the launch gate (exit 3 and nothing is submitted when it
   refuses) -- or, with --after JOBID, checks that JOBID (the pre-build job) is known to
   SLURM and has not failed, since the manifest is that job's output.
2. Renders recipes/eval_job.sbatch: one array index per eval job (evaluation.matrix rows x
   their tasks, else one per task); each index runs the gate narrowed to its task, exports
   the manifest's environment, then runs the consumer.
3. `sbatch --parsable` (with --dependency=afterok:JOBID when --after is given); prints the
   array's job id on stdout (a JSON document with --json).

--command is a template for the consumer step; placeholders (substituted shell-quoted):
{task} {run} {index} {script} {model} {builder} {data_files} {field} {field_arg} {split_arg}
{split} {manifest}. Default: `inspect eval {script} --model {model} -T data_path={data_files}
{split_arg}` for consumer=inspect (needs --model; {split_arg} is `-T split=<field>`, which the
client's task scripts pass on as field=split), and a plain
`datasets.load_dataset(...)` call that prints the row count for consumer=datasets.
Exit codes: 0 submitted, 2 usage/config/sbatch error, 3 the gate refused.

    python recipes/submit.py --cells EXPERIMENT_DIR [--after JOBID] [--dry-run] [--json] [overrides]

submits the experiment's scaffolded cells instead (<run>/eval/<cell>/cell.slurm, as the
scaffolder wrote them): every cell at once, no stagger. Each is submitted as a gated copy
in the experiment's state folder (.cluster-agent/cells/<run>/<cell>.slurm): the cell's own
text, #SBATCH lines included, with `cluster-agent action=check cell=<cell> output=shell`
inserted just before its `inspect eval`. Without --after every cell's gate is run first
and nothing is submitted if one refuses (exit 3). Prints one job id per cell.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="recipes/submit.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="cluster-agent overrides, e.g. experiment=PATH site=della")
    parser.add_argument("--cells", metavar="EXPERIMENT_DIR",
                        help="submit the scaffolded cells (<run>/eval/<cell>/cell.slurm), each gated on its own call")
    parser.add_argument("--after", metavar="JOBID", help="chain on the pre-build job: --dependency=afterok:JOBID")
    parser.add_argument("--command", help="consumer command template (see above)")
    parser.add_argument("--model", help="model for the default `inspect eval` command")
    parser.add_argument("--only", help="comma-separated task names: submit only their jobs")
    parser.add_argument("--chdir", help="the jobs' working folder (default: the experiment summary's folder, "
                        "where its relative paths resolve)")
    parser.add_argument("--job-name", help="SLURM job name (default eval-<site>)")
    parser.add_argument("--no-check", action="store_true",
                        help="do not check the manifest before submitting (each job still runs the gate)")
    parser.add_argument("--dry-run", action="store_true", help="render and print the script; submit nothing")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = parser.parse_args(argv)

    from agent import config, gate, launcher
    from agent.errors import EXIT_GATE, AgentError

    if args.cells:
        return submit_cells(args)
    try:
        cfg = config.load(args.overrides)
        only = [t for t in (args.only or "").split(",") if t] or None
        manifest, jobs = launcher.eval_jobs(cfg, args.command, args.model, only)
        if args.after:
            launcher.check_dependency(args.after)
        elif not (args.dry_run or args.no_check):
            for task in only or [None]:
                result = gate.check(manifest, task, consumer=cfg.consumer.kind.name)
                if not result["ok"]:
                    gate.emit(result, "text", stdout=sys.stderr)
                    sys.stderr.write("submit: nothing submitted; run cluster-agent (the pre-build) again, "
                                     "or chain on a pre-build job with --after JOBID\n")
                    return EXIT_GATE
        folder = launcher.job_folder(cfg)
        from agent import paths

        chdir = Path(args.chdir).resolve() if args.chdir else paths.for_config(cfg).summary.parent
        text = launcher.render_eval(cfg, manifest, jobs, folder, chdir, args.after, args.job_name)
        if args.dry_run:
            sys.stdout.write(text)
            return 0
        script = launcher.write_script(folder, "eval", text)
        job_id = launcher.sbatch(script, chdir)
    except AgentError as exc:
        sys.stderr.write(f"submit: error: {exc}\n")
        return exc.exit_code
    sys.stderr.write(f"submit: {len(jobs)} eval jobs as array job {job_id} (0-{len(jobs) - 1}, all at once"
                     f"{', after job ' + args.after + ' succeeds' if args.after else ''}); "
                     f"script {script}; output {folder}/eval-{job_id}_<index>.out\n")
    if args.json:
        sys.stdout.write(json.dumps({"job_id": job_id, "jobs": len(jobs), "script": str(script),
                                     "output": str(folder / f"eval-{job_id}_%a.out"),
                                     "tasks": [j.task for j in jobs], "after": args.after}) + "\n")
    else:
        sys.stdout.write(f"{job_id}\n")
    return 0


def submit_cells(args: argparse.Namespace) -> int:
    """--cells: every scaffolded cell.slurm at once, each as a gated copy (agent.cellsubmit)."""
    import os
    import shlex

    from agent import cellsubmit, cells, config, launcher, paths
    from agent.errors import EXIT_GATE, AgentError

    unused = [f"--{k.replace('_', '-')}" for k in ("command", "model", "only", "chdir", "job_name")
              if getattr(args, k)]
    try:
        if unused:
            raise launcher.LaunchError(f"{', '.join(unused)}: not with --cells (the cells' own cell.slurm "
                                       "files say what each job runs)")
        folder = cells.experiment_folder(Path(os.path.abspath(args.cells)))  # abspath: keep the user's symlinks
        summary = folder / cells.SUMMARY_NAME
        cfg = config.load([f"experiment={summary}", *args.overrides])
        state = paths.for_config(cfg).state / ".cluster-agent"  # beside the manifest
        subs = cellsubmit.plan(folder, state, args.after)
        for sub in subs:
            if sub.call.failure:
                sys.stderr.write(f"submit: warning: {sub.call.cell}: {sub.call.failure}\n")
        if args.dry_run:  # writes nothing
            for sub in subs:
                sys.stdout.write(f"# ==> {sub.script} <==\n# {shlex.join(sub.argv)}  (from {sub.call.cell})\n")
                sys.stdout.write(cellsubmit.render_gated(sub.call))
            return 0
        if args.after:
            launcher.check_dependency(args.after)
        elif not args.no_check:
            refused = cellsubmit.precheck(subs)
            if refused:
                for line in refused:
                    sys.stderr.write(f"{line}\n")
                sys.stderr.write(f"submit: nothing submitted: the gate refused {len(refused)} of {len(subs)} cells; "
                                 "run cluster-agent (the pre-build) again, or chain on a pre-build job with "
                                 "--after JOBID\n")
                return EXIT_GATE
        for sub in subs:
            cellsubmit.write_gated(sub)
        cellsubmit.submit(subs)
    except AgentError as exc:
        sys.stderr.write(f"submit: error: {exc}\n")
        return exc.exit_code
    sys.stderr.write(f"submit: {len(subs)} cells submitted at once"
                     f"{', after job ' + args.after + ' succeeds' if args.after else ''}; "
                     f"gated copies in {state / 'cells'}\n")
    if args.json:
        sys.stdout.write(json.dumps({"jobs": [{"job_id": s.job_id, "cell": str(s.call.cell), "script": str(s.script)}
                                              for s in subs], "after": args.after}) + "\n")
    else:
        sys.stdout.write("".join(f"{s.job_id}\n" for s in subs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
