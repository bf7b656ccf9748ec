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


def log_item(item: Any) -> None:
    call = item.entry.call
    details = [f"field={call.field}"] if call.field else []
    if item.status in ("built", "rebuilt"):
        details += [f"{item.rows} rows", f"{item.seconds:.1f} s"]
    if item.status in ("built", "rebuilt", "unchanged"):
        event(_EVENTS[item.status], call.data_files + (f" ({', '.join(details)})" if details else ""))
        for note in item.notes:
            event("CACHE_NOTE", note)
    else:
        # the error text already names the path: "<path> (<reason>)"
        event(_EVENTS.get(item.status, "CACHE_FAILED"), item.error or call.data_files, "WARNING")


class Progress:
    """datasets done / total and the current file, on a terminal only (tqdm)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.bar = None
        if enabled and total > 1:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="dataset", file=sys.stderr, leave=False,
                            bar_format="{l_bar}{bar:20}| {n_fmt}/{total_fmt} datasets {postfix}")

    def advance(self, item: Any) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(item.entry.call.data_files[-60:], refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def entry_json(entry: Dict[str, Any]) -> Dict[str, Any]:
    call = entry["call"]
    return {"source": call["data_files"], "field": call.get("field"), "split": call.get("split"),
            "tasks": entry["tasks"], "status": entry["status"], "rows": entry.get("rows"),
            "error": entry.get("error")}


def result(doc: Dict[str, Any], manifest_path: Path, output: str, stdout: TextIO) -> None:
    if output == "json":
        stdout.write(json.dumps({
            "decision": doc["decision"], "manifest": str(manifest_path), "summary": doc["summary"],
            "entries": [entry_json(e) for e in doc["entries"]]}) + "\n")
        return
    s = doc["summary"]
    stdout.write(f"{doc['decision']}: {s['built']} built, {s['unchanged']} unchanged, {s['rebuilt']} rebuilt, "
                 f"{s['missing']} missing, {s['failed']} failed -> {manifest_path}\n")


def plan(items: List[Any], cfg: Any, paths: Any, stdout: TextIO) -> int:
    """action=plan: what prebuild would do; writes nothing."""
    rows = []
    for item in items:
        rows.append({"source": item.entry.call.data_files, "field": item.entry.call.field,
                     "split": item.entry.call.split, "tasks": item.entry.tasks,
                     "action": {"build": "build", "unchanged": "skip"}.get(item.status, item.status),
                     "reason": item.reason or item.error or "", "hazards": item.entry.hazards,
                     "call": item.entry.call.python(cfg.consumer.kind.name)})
    if cfg.output.name == "json":
        stdout.write(json.dumps({"action": "plan", "manifest": str(paths.manifest),
                                 "hf_cache": str(paths.roots.hf), "inspect_cache": str(paths.roots.inspect),
                                 "entries": rows}) + "\n")
        return 0
    stdout.write(f"Plan for {paths.summary} ({len(rows)} unique datasets; nothing is written)\n")
    stdout.write(f"  HF cache:      {paths.roots.hf}\n")
    if cfg.consumer.kind.name == "inspect":
        stdout.write(f"  inspect cache: {paths.roots.inspect}\n")
    stdout.write(f"  manifest:      {paths.manifest}\n")
    for row in rows:
        why = f" ({row['reason']})" if row["reason"] else ""
        stdout.write(f"  {row['action']:<9} {row['call']}{why}\n")
        stdout.write(f"            tasks: {', '.join(row['tasks'])}\n")
    return 0
