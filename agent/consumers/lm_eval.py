"""consumer=lm_eval: lm-evaluation-harness jobs (`lm_eval --model M --tasks T --include_path P`).

A job's data is whatever its lm-eval tasks load: each task makes exactly one call at task
construction, ``datasets.load_dataset(path=dataset_path, name=dataset_name,
**dataset_kwargs)``, with no split (agent.lmeval_tasks reads that call out of lm-eval's own
task manager; docs/lm_eval.md). So an entry is that call, and only the HF layer is read.

The summary names the tasks (``evaluation.tasks[].lm_eval_task: NAME``, a task, group or
task YAML path, plus ``include_path:`` per task or under ``evaluation``, relative to the
summary's folder). The jobs run in the summary's folder (recipes/submit.py's --chdir), so
a relative ``data_files`` is taken there, as `datasets` takes it in the job.

Verification is lm-eval's own loading of one task of the entry (the real task manager,
the real ``download``, the real call) in the fresh verifier process: it must be a pure
cache hit and read the rows the build read.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional

from agent.consumers import Consumer
from agent.entry import EntryRecord, LoadCall
from agent.errors import ConfigError, SummaryError


def _memo_dir() -> Optional[Path]:
    """Beside the config memo (not under a cache root we build); None when memos are off."""
    from agent import confcache

    return confcache.folder().parent / "lm_eval_tasks" if confcache.enabled() else None


class LmEvalConsumer(Consumer):
    name = "lm_eval"
    keying = ("datasets", "lm_eval")  # lm-eval decides which call a task makes
    needs = ("lm_eval", "lm-eval")
    title = "HF datasets (lm-eval tasks)"
    job_passes_data_files = False

    def check_installed(self, versions: Mapping[str, Optional[str]]) -> None:
        from agent.lmeval_tasks import INSTALL_HINT

        if versions.get("lm_eval") is None:
            raise ConfigError(f"consumer=lm_eval needs lm-eval: {INSTALL_HINT}, or pass consumer=datasets")

    def python(self, call: LoadCall, quote: Callable[[str], str] = repr) -> str:
        """As lm-eval writes it: path=, name=, then the task's dataset_kwargs."""
        args = [f"path={quote(call.builder)}", f"name={quote(call.name) if call.name is not None else None}"]
        args += [f"{k}={quote(v) if isinstance(v, str) else v!r}" for k, v in self._kwargs(call).items()]
        return f"datasets.load_dataset({', '.join(args)})"

    @staticmethod
    def _kwargs(call: LoadCall) -> Dict[str, Any]:
        out = {k: getattr(call, k) for k in ("data_dir", "revision") if getattr(call, k) is not None}
        out.update(call.kwargs())
        if call.split is not None:
            out["split"] = call.split
        return out

    def eval_command(self, model: Optional[str]) -> str:
        if not model:
            from agent.errors import LaunchError

            raise LaunchError("consumer=lm_eval: pass --model NAME for `lm_eval` (e.g. hf, vllm, or dummy for a "
                              "dry run), or --command TEMPLATE")
        return "lm_eval run --model {model} --tasks {lm_eval_task} {include_path_arg}"

    # --- the plan ----------------------------------------------------------------------

    def plan(self, summary: Any, task: Optional[str]) -> List[EntryRecord]:
        """One entry per unique call the summary's lm-eval tasks make (agent.plan.plan_entries)."""
        from agent.lmeval_tasks import resolve_each_memo  # imports lm-eval only when it must resolve
        tasks = [t for t in summary.tasks if task is None or t.name == task]
        if not tasks:
            raise SummaryError(f"task={task}: no such task in {summary.path}; tasks: "
                               f"{', '.join(t.name for t in summary.tasks)}")
        plain = [t.name for t in tasks if t.lm_eval_task is None]
        if plain:
            raise SummaryError(f"{summary.path}: consumer=lm_eval, but task{'s' if len(plain) > 1 else ''} "
                               f"{', '.join(plain)} name{'' if len(plain) > 1 else 's'} no lm_eval_task: add "
                               "lm_eval_task: NAME (and include_path: FOLDER for your own task YAMLs)")
        by_include: Dict[Optional[str], List[Any]] = {}
        for t in tasks:
            by_include.setdefault(self._include(summary, t), []).append(t)
        entries: Dict[str, EntryRecord] = {}
        for include, group in by_include.items():
            resolved = resolve_each_memo(list(dict.fromkeys(t.lm_eval_task for t in group)), include,
                                         str(summary.folder), _memo_dir())
            for t in group:
                for lm in resolved[t.lm_eval_task]:
                    call = self._load_call(lm, t.name)
                    record = entries.get(call.key())
                    if record is None:
                        # lm_eval_tasks: the leaf tasks making the call; tasks_arg: what
                        # the jobs pass to --tasks (what the verifier loads, as they do)
                        record = entries[call.key()] = EntryRecord(
                            call, [], call.shown, list(lm.hazards),
                            job={"lm_eval_tasks": list(lm.tasks), "tasks_arg": [], "include_path": include,
                                 "cwd": os.path.realpath(str(summary.folder))})  # where the jobs run
                    if t.name not in record.tasks:
                        record.tasks.append(t.name)
                    if t.lm_eval_task not in record.job["tasks_arg"]:
                        record.job["tasks_arg"].append(t.lm_eval_task)
        return list(entries.values())

    @staticmethod
    def _include(summary: Any, t: Any) -> Optional[str]:
        if t.include_path is None:
            return None
        folder = os.path.realpath(os.path.join(str(summary.folder), os.path.expanduser(t.include_path)))
        if not os.path.isdir(folder):
            raise SummaryError(f"{summary.path}: task '{t.name}': include_path {t.include_path} is not a folder "
                               f"({folder}); give the folder of your lm-eval task YAMLs")
        return folder

    @staticmethod
    def _load_call(lm: Any, task_name: str) -> LoadCall:
        """An lm-eval call as the entry's LoadCall, nothing rewritten."""
        kwargs = lm.call.load_kwargs()
        builder, name = str(kwargs.pop("path")), kwargs.pop("name", None)
        order = [k for k in kwargs if k not in ("data_dir", "revision", "split")]  # the task's own order
        data_files = kwargs.pop("data_files", None)
        if data_files is None:
            raise SummaryError(f"lm_eval task {', '.join(lm.tasks)} (summary task '{task_name}'): dataset_path "
                               f"{builder} with no dataset_kwargs.data_files; cluster-agent pre-builds local "
                               "files named by data_files")
        call = LoadCall(builder, data_files, None, None)
        globbed = [p for p in call.patterns() if glob.has_magic(p)]
        if globbed:
            raise SummaryError(f"lm_eval task {', '.join(lm.tasks)}: data_files {globbed[0]} is a glob; a file "
                               "added later would change the jobs' HF cache key unseen by the gate: list the files")
        extra = tuple((k, kwargs[k]) for k in order if k not in ("data_files", "field"))
        return LoadCall(builder, data_files, kwargs.get("field"), kwargs.get("split"), cwd=lm.call.cwd, name=name,
                        data_dir=kwargs.get("data_dir"), revision=kwargs.get("revision"), extra=extra,
                        order=tuple(order))

    # --- verify ------------------------------------------------------------------------

    def preload(self) -> None:
        import lm_eval.api.task  # noqa: F401
        import lm_eval.tasks  # noqa: F401

    def consume(self, call: Mapping[str, Any]) -> int:
        """lm-eval's own loading of the tasks that make this call, in the jobs' folder (every
        one: a task's own steps after the call, e.g. a process_docs map, may write too)."""
        from agent.build import in_folder
        from agent.lmeval_tasks import load_tasks

        job = call.get("job") or {}
        names = job.get("tasks_arg") or []
        if not names:
            raise ValueError("the entry records no lm-eval task to load")
        # the jobs' folder: a task YAML path given to --tasks is taken there, and so is a
        # relative data_files (call.cwd, the same folder when the call has one)
        with in_folder(job.get("cwd") or call.get("cwd")):
            loaded = load_tasks(names, job.get("include_path"))
        rows = [ds.num_rows for t in loaded["tasks"].values() for ds in
                (t.dataset.values() if hasattr(t.dataset, "values") else [t.dataset])]
        return sum(rows)


CONSUMER = LmEvalConsumer()
