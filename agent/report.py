"""What the user sees: log lines per entry, progress, the plan, the final JSON or recap."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Dict, List, TextIO

from agent.logs import event

_EVENTS = {
    "built": "CACHE_BUILT",
    "rebuilt": "CACHE_REBUILT",
    "unchanged": "CACHE_UNCHANGED",
    "missing": "CACHE_MISSING",
    "failed": "CACHE_FAILED",
}


def log_item(record: Any) -> None:
    """The entry's one line (after its verification, for a built one)."""
    call = record.call
    status = str(record.status)
    details = [f"field={call.field}"] if call.field else []
    if status in ("built", "rebuilt"):
        details += [f"{record.rows} rows", f"{record.seconds:.1f} s"]
    if status in ("built", "rebuilt", "unchanged"):
        event(_EVENTS[status], call.shown + (f" ({', '.join(details)})" if details else ""))
        for note in record.notes:
            event("CACHE_NOTE", note)
        return
    # the error text names the path: "<path> (<reason>)"; add the field (two failures of
    # one file must not look like duplicates) and the tasks that need it
    message = record.error or call.shown
    for prefix in (f"{call.shown} (", f"{call.source()} ("):
        if call.field and message.startswith(prefix):
            message = f"{prefix}field={call.field}: {message[len(prefix):]}"
            break
    tasks = ", ".join(record.tasks)
    event(_EVENTS.get(status, "CACHE_FAILED"), f"{message}; needed by task{'s' if len(record.tasks) > 1 else ''} {tasks}",
          "WARNING")


class Progress:
    """datasets done / total and the current file, on a terminal only (tqdm)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.bar = None
        if enabled and total > 1:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="dataset", file=sys.stderr, leave=False,
                            bar_format="{l_bar}{bar:20}| {n_fmt}/{total_fmt} datasets {postfix}")

    def advance(self, record: Any) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(record.call.shown[-60:], refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def entry_json(entry: Dict[str, Any]) -> Dict[str, Any]:
    call = entry["call"]
    return {"source": call["data_files"], "cwd": call.get("cwd"), "field": call.get("field"), "split": call.get("split"),
            "tasks": entry["tasks"], "status": entry["status"], "rows": entry.get("rows"),
            "error": entry.get("error")}


def result(doc: Dict[str, Any], counts: Dict[str, int], manifest_path: Path, output: str, stdout: TextIO) -> None:
    """The closing JSON document or recap. `counts`: this run's entries only (a narrowed
    run's manifest also holds entries the run never touched)."""
    if output == "json":
        stdout.write(json.dumps({
            "decision": doc["decision"], "manifest": str(manifest_path), "summary": counts,
            "entries": [entry_json(e) for e in doc["entries"]]}) + "\n")
        return
    s = counts
    stdout.write(f"{doc['decision']}: {s['built']} built, {s['unchanged']} unchanged, {s['rebuilt']} rebuilt, "
                 f"{s['missing']} missing, {s['failed']} failed -> {manifest_path}\n")


def plan(records: List[Any], consumer: Any, paths: Any, output: str, stdout: TextIO) -> int:
    """action=plan: what prebuild would do; writes nothing."""
    rows = []
    for r in records:
        status = "build" if r.needs_build else str(r.status)
        rows.append({"source": r.call.data_files, "cwd": r.call.cwd, "field": r.call.field, "split": r.call.split,
                     "tasks": r.tasks,
                     "action": {"unchanged": "skip"}.get(status, status),
                     "reason": r.reason or r.error or "", "hazards": r.hazards, "call": consumer.python(r.call)})
    if output == "json":
        stdout.write(json.dumps({"action": "plan", "manifest": str(paths.manifest),
                                 "hf_cache": str(paths.roots.hf), "inspect_cache": str(paths.roots.inspect),
                                 "entries": rows}) + "\n")
        return 0
    stdout.write(f"Plan for {paths.summary} ({len(rows)} unique datasets; nothing is written)\n")
    stdout.write(f"  HF cache:      {paths.roots.hf}\n")
    if "inspect" in consumer.layers:
        stdout.write(f"  inspect cache: {paths.roots.inspect}\n")
    stdout.write(f"  manifest:      {paths.manifest}\n")
    for row in rows:
        why = f" ({row['reason']})" if row["reason"] else ""
        stdout.write(f"  {row['action']:<9} {row['call']}{why}\n")
        stdout.write(f"            tasks: {', '.join(row['tasks'])}\n")
    return 0
