"""Building one entry's cache layers, exactly as the jobs will look them up.

Runs in the agent's process (jobs=1) or in a worker process (jobs>1); either way the
job environment (cache roots, offline flags) is put in ``os.environ`` *before*
``datasets`` is imported, because `datasets` reads it once at import.

HF layer: the consumer's own ``load_dataset`` call. Before it, the folder that call will
use is computed with ``load_dataset_builder``; a folder that is stale (the source was
rewritten under the same key, e.g. ``cp -p``) or broken (info file without its Arrow
data) is moved aside atomically first, so the call rebuilds it.

inspect layer: ``save_to_disk`` into a temporary folder beside the target, then renamed
into place (swapped atomically with a stale one where the kernel allows), so no job ever
sees half of it; inspect-ai itself writes it in place with no lock.

Each entry is built under its own lock, and a small record of what was built is kept
next to the lock (``<hf root>/.cluster-agent/``): an agent that waited for the lock, or
another experiment sharing the dataset, sees the record and does not build again.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from agent import consumers, diagnose, locks
from agent.entry import EntryRecord, Layer, LoadCall, Status, assess, fingerprint_more, layer_problems
from agent.errors import LockTimeout, SourceError
from agent.fingerprint import Fingerprint, fingerprint
from agent.netfs import ensure_dir
from agent.layers import HF, CacheRoots, snapshot_layer
from agent.paths import locks_dir, records_dir


@dataclass(frozen=True)
class BuildSettings:
    """What every entry of one run is built with (sent to each build worker)."""

    consumer: str
    roots: CacheRoots
    job_env: Dict[str, str]
    versions: Dict[str, Optional[str]]
    lock_kind: str = "flock"
    lock_timeout_s: float = 900.0
    lock_stale_s: float = 3600.0
    force: bool = False


def record_key(call: LoadCall, consumer: str, versions: Dict[str, Optional[str]]) -> str:
    import hashlib

    raw = json.dumps([call.key(), consumer, versions.get("datasets"), versions.get("inspect_ai")])
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


def _read_record(path: Path) -> Optional[dict]:
    from agent.netfs import is_json, read_settled  # another node may be replacing it now

    try:
        return json.loads(read_settled(path, is_json))
    except (OSError, ValueError):
        return None


def record_still_valid(doc: Optional[dict], source: Fingerprint, consumer: str, roots: Optional[CacheRoots] = None,
                       versions: Optional[Dict[str, Optional[str]]] = None) -> bool:
    """A shared record proves the layers were built from this very file content
    (agent.entry.assess, the rule the manifest and the gate use too)."""
    record = EntryRecord.parse(doc) if doc else None
    if record is None:
        return False
    plugin = consumers.get(consumer)
    expected = plugin.expected(roots, record.call, versions or {}) if roots is not None else {}
    return assess(record, source, plugin.layers, expected) is None


def _set_job_env(env: Dict[str, str]) -> None:
    import sys

    if "datasets" in sys.modules:
        # The roots are read at import; a mismatch here would build into the wrong place.
        import datasets.config as dc

        if str(dc.HF_DATASETS_CACHE) != env["HF_DATASETS_CACHE"]:
            dc.HF_DATASETS_CACHE = Path(env["HF_DATASETS_CACHE"])
    os.environ.update(env)


def move_aside(folder: Path) -> None:
    """Rename a stale or broken folder out of the way (atomic), then delete it."""
    grave = folder.with_name(f".{folder.name}.stale-{locks.owner_tag()}")
    try:
        os.rename(folder, grave)
    except FileNotFoundError:
        return
    import shutil  # here: shutil (zlib, bz2, lzma) is 2-4 ms of every unchanged re-run

    shutil.rmtree(grave, ignore_errors=True)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False if unsupported."""
    try:
        import ctypes  # only here: 5-10 ms of import on every re-run otherwise

        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    rc = fn(_AT_FDCWD, os.fsencode(str(a)), _AT_FDCWD, os.fsencode(str(b)), _RENAME_EXCHANGE)
    return rc == 0


def publish_folder(tmp: Path, target: Path) -> None:
    """Put a finished folder at `target`; an existing one is replaced without a gap where
    the file system allows it, else with a gap of one rename."""
    try:
        os.rename(tmp, target)
        return
    except OSError:
        if not target.exists():
            raise
    if _exchange(tmp, target):
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old folder
        return
    move_aside(target)
    os.rename(tmp, target)


def hf_layer_whole(folder: Path, split: Optional[str]) -> bool:
    """Info file present and the Arrow files hold the rows the info file promises
    (split=None: every split the info file lists, as a call without split= loads them)."""
    info_path = folder / "dataset_info.json"
    try:
        info = json.loads(info_path.read_text())
        splits = list(info["splits"]) if split is None else [split]
        expected = {s: int(info["splits"][s]["num_examples"]) for s in splits}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    if not expected:
        return False
    return all(_split_whole(folder, s, n) for s, n in expected.items())


def _split_whole(folder: Path, split: str, expected: int) -> bool:
    import pyarrow as pa

    rows = 0
    shards = sorted(folder.glob(f"*-{split}*.arrow"))
    if not shards:
        return False
    try:
        for shard in shards:
            with pa.memory_map(str(shard)) as source:
                reader = pa.ipc.open_stream(source)
                for batch in reader:
                    rows += batch.num_rows
    except (OSError, pa.ArrowInvalid):
        return False
    return rows == expected


def _build_hf(call: LoadCall, replace: bool, notes: List[str], lock_kind: str, lock_stale_s: float):
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    with in_folder(call.cwd):  # a relative data_files is joined to the job's folder (part of the HF key)
        builder = datasets.load_dataset_builder(call.builder, **named(call), **builder_kwargs(call))
    hf_dir = Path(builder.cache_dir)
    _clean_hf_leftovers(hf_dir, notes, lock_kind, lock_stale_s)
    if hf_dir.exists():
        if replace:
            notes.append(f"source changed under the same HF key: replaced {hf_dir}")
            move_aside(hf_dir)
        elif not hf_layer_whole(hf_dir, call.split):
            notes.append(f"repaired broken HF cache {hf_dir}")
            move_aside(hf_dir)
    with in_folder(call.cwd):
        ds = datasets.load_dataset(call.builder, **split_arg(call), **named(call), **call.kwargs())
    files = cache_files(ds)
    folder = Path(files[0]).parent if files else hf_dir
    return ds, folder


def split_arg(call: LoadCall) -> Dict[str, str]:
    """split= as the job passes it: an lm-eval job passes none (the whole DatasetDict)."""
    return {} if call.split is None else {"split": call.split}


def cache_files(ds) -> List[str]:
    """The Arrow files a Dataset (or every split of a DatasetDict) reads."""
    parts = ds.cache_files.values() if isinstance(ds.cache_files, dict) else [ds.cache_files]
    return [f["filename"] for part in parts for f in part]


def total_rows(ds) -> int:
    rows = ds.num_rows
    return sum(rows.values()) if isinstance(rows, dict) else int(rows)


@contextlib.contextmanager
def in_folder(folder: Optional[str]):
    """Run a call in the job's folder (when its data_files is relative), then come back."""
    if folder is None:
        yield
        return
    back = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(back)


def named(call: LoadCall) -> Dict[str, str]:
    """load_dataset's named arguments the job sets (name=, data_dir=, revision=)."""
    return {k: getattr(call, k) for k in ("name", "data_dir", "revision") if getattr(call, k) is not None}


def builder_kwargs(call: LoadCall) -> Dict[str, object]:
    """The job's kwargs that reach the builder: load_dataset takes some of its own
    (keep_in_memory=, num_proc=, ...) that load_dataset_builder refuses."""
    import inspect as pyinspect

    import datasets

    own = set(pyinspect.signature(datasets.load_dataset).parameters) - set(
        pyinspect.signature(datasets.load_dataset_builder).parameters)
    return {k: v for k, v in call.kwargs().items() if k not in own}


def _clean_hf_leftovers(hf_dir: Path, notes: List[str], lock_kind: str, lock_stale_s: float) -> None:
    """Under the entry lock: graves of ours whose owner is gone, and the `.incomplete`
    folder of a dead `datasets` builder. datasets' own builder lock (a flock) proves
    nobody on this host is writing it; with site.lock=soft that lock may not hold
    across nodes, so there the folder must also be older than lock_stale_s."""
    for gone in locks.clean_leftovers(hf_dir.parent, f".{hf_dir.name}.stale-", lock_stale_s):
        notes.append(f"removed {gone} (left by a builder that is gone)")
    incomplete = Path(f"{hf_dir}.incomplete")
    if not incomplete.is_dir():
        return
    from filelock import FileLock, Timeout

    try:
        with FileLock(f"{hf_dir}_builder.lock", timeout=0):
            if lock_kind == "soft":
                newest = max([incomplete.stat().st_mtime] + [p.stat().st_mtime for p in incomplete.rglob("*")])
                if time.time() - newest <= lock_stale_s:
                    return
            import shutil

            shutil.rmtree(incomplete)
            notes.append(f"removed {incomplete} (left by a datasets builder that is gone)")
    except (Timeout, OSError):
        return  # a live builder holds it, or it vanished: leave it alone


def _fingerprint_while_importing(path: str, previous: Optional[Fingerprint],
                                 trust_stat: Optional[bool] = None) -> Fingerprint:
    """The source's fingerprint, hashed (when it must be) in a thread while `datasets` is
    imported: hashing releases the GIL, so a large file's hash costs no wall time on a
    second core. The job environment is already in os.environ (read at import)."""
    import sys
    import threading

    if "datasets" in sys.modules:
        return fingerprint(path, previous, trust_stat=trust_stat)
    box: dict = {}

    def work() -> None:
        try:
            box["fp"] = fingerprint(path, previous, trust_stat=trust_stat)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["exc"] = exc

    thread = threading.Thread(target=work, name="fingerprint", daemon=True)
    thread.start()
    with contextlib.suppress(Exception):  # a broken install fails where the build imports it
        import datasets  # noqa: F401
    thread.join()
    if "exc" in box:
        raise box["exc"]
    return box["fp"]


def die_with_parent(parent: int, agent: Optional[int] = None) -> None:
    """Build-worker initializer: exit when the agent dies. A forked pool worker holds
    both ends of its task pipe, so after a `kill -9` of the agent it would wait forever
    (found on the shared-FS rig: it kept the agent's stdout open). Linux only.

    `parent`: the process it was forked from (the agent, or the fork server of jobs > 1);
    `agent`: the agent, when that is another process. A fork server outlives the agent
    while any worker lives (they hold its "alive" pipe), so such a worker also watches
    the agent itself."""
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the agent died before prctl took effect
        os._exit(1)
    if agent is not None and agent != parent:
        _exit_with(agent)


def _exit_with(pid: int) -> None:
    """Exit this process when process `pid` ends: a daemon thread waits on its pidfd
    (Linux 5.3+; no polling), else checks once a second."""
    import select
    import threading

    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        os._exit(1)
    except (OSError, AttributeError):
        fd = None

    def watch() -> None:
        if fd is not None:
            select.select([fd], [], [])
        else:
            while True:
                time.sleep(1.0)
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                except PermissionError:
                    pass
        os._exit(1)

    threading.Thread(target=watch, name="agent-watch", daemon=True).start()


def build_entry(record: EntryRecord, s: BuildSettings) -> EntryRecord:
    """Build (or confirm) one entry under its lock and return its new record (status,
    rows, layers, source, seconds, notes); raises SourceError / LockTimeout on failure."""
    t0 = time.perf_counter()
    _set_job_env(s.job_env)
    call = record.call
    previous = record.previous.source if record.previous else None
    # the plan's hash, taken by this run moments ago, stands for the content whatever the
    # file system (the hash after the build re-checks it); a manifest's older one does not
    fresh = bool(record.source and record.source.sha256)
    current = record.source if fresh else previous
    before = _fingerprint_while_importing(call.source(), current, trust_stat=True if fresh else None)
    # a call's further files (lm-eval's mapping of splits): few and small; hashed here
    more_before = fingerprint_more(call, record if fresh else record.previous)
    key = record_key(call, s.consumer, s.versions)
    try:
        lock = locks.hold(locks_dir(s.roots) / f"{key}.lock", s.lock_kind, s.lock_timeout_s, s.lock_stale_s)
        lock.__enter__()
    except LockTimeout as exc:
        raise LockTimeout(f"{call.describe()} (not built: {exc})") from None
    try:
        return _build_locked(record, s, before, more_before, records_dir(s.roots) / f"{key}.json", t0)
    finally:
        lock.__exit__(None, None, None)


def _build_locked(record: EntryRecord, s: BuildSettings, before: Fingerprint, more_before: Dict[str, Fingerprint],
                  record_path: Path, t0: float) -> EntryRecord:
    call = record.call
    path = call.shown  # messages name the string as the job passes it
    plugin = consumers.get(s.consumer)
    notes: List[str] = []
    for gone in locks.clean_leftovers(record_path.parent, f".{record_path.name}.tmp-", s.lock_stale_s):
        notes.append(f"removed {gone} (left by an agent that is gone)")
    shared_doc = _read_record(record_path)
    shared = EntryRecord.parse(shared_doc) if shared_doc else None
    if (not s.force and shared is not None
            and assess(shared, before, plugin.layers, plugin.expected(s.roots, call, s.versions), more_before) is None):
        return replace_fields(record, status=Status.UNCHANGED, rows=shared.rows, layers=shared.layers,
                              source=before, more_sources=more_before, seconds=time.perf_counter() - t0, by_other_agent=True,
                              notes=notes + ["built by another agent"])
    # The same HF key with other content: the HF folder must be replaced, not reused.
    previous = record.previous.source if record.previous else None
    old = shared.source if shared is not None and shared.source is not None else previous
    content_moved = old is not None and old.sha256 != before.sha256
    replace = s.force or (content_moved and old is not None and old.mtime_ns == before.mtime_ns)
    old_more = shared.more_sources if shared is not None and shared.source is not None else (
        record.previous.more_sources if record.previous else {})
    replace = replace or any(p in old_more and old_more[p].sha256 != fp.sha256 and old_more[p].mtime_ns == fp.mtime_ns
                             for p, fp in more_before.items())
    if shared is None and previous is None:
        replace = replace or _older_than_source(call, before)
    try:
        ds, hf_folder = _build_hf(call, replace, notes, s.lock_kind, s.lock_stale_s)
    except Exception as exc:  # noqa: BLE001 - every failure becomes one clear line
        raise SourceError(diagnose.explain(call.source(), call.field, exc).replace(call.source(), path, 1)) from exc
    layers = {HF: snapshot_layer(hf_folder)}
    problems = layer_problems(HF, layers[HF])
    if problems:
        raise SourceError(f"{path} ({problems[0]})")
    try:
        layers.update(plugin.build_layers(call, s, ds, notes))
    except OSError as exc:
        raise SourceError(f"{path} (writing the {plugin.extra_title} cache failed: {exc.strerror or exc}; "
                          "nothing was published)") from exc
    rows = total_rows(ds)
    try:
        after = fingerprint(call.source(), before)
        more_after = fingerprint_more(call, replace_fields(record, more_sources=more_before))
    except SourceError as exc:
        raise SourceError(f"{path} (removed or unreadable while it was being built; restore it and run "
                          "cluster-agent again)", missing=exc.missing) from None
    moved = [p for p, fp in more_after.items() if (fp.sha256, fp.mtime_ns) != (more_before[p].sha256, more_before[p].mtime_ns)]
    if after.sha256 != before.sha256 or after.mtime_ns != before.mtime_ns or moved:
        raise SourceError(f"{path} (changed while it was being built; run cluster-agent again)")
    status = Status.REBUILT if old is not None or replace else Status.BUILT
    built = replace_fields(record, status=status, rows=rows, layers=layers, source=before, more_sources=more_before,
                           seconds=time.perf_counter() - t0, notes=notes, error=None)
    ensure_dir(record_path.parent)
    write_json_atomic(record_path, {**built.to_json(plugin.python(call)), "consumer": s.consumer,
                                    "versions": s.versions, "built_at": time.time()})
    return built


def replace_fields(record: EntryRecord, **changes) -> EntryRecord:
    """A copy of `record` with `changes` (the worker's answer; the planned record stays as it was)."""
    import dataclasses

    return dataclasses.replace(record, **changes)


def write_json_atomic(path: Path, doc: dict) -> None:
    from agent.manifest import write_text_atomic

    write_text_atomic(path, json.dumps(doc, indent=1))


def sweep_leftovers(roots: CacheRoots, call: LoadCall, consumer: str, versions: Dict[str, Optional[str]],
                    layers: Dict[str, Layer], lock_kind: str, lock_stale_s: float,
                    listings: Optional[Dict[str, List[str]]] = None) -> List[str]:
    """For an entry that needs no build: remove what a killed builder left beside its
    layers (temp folders, graves, datasets' `.incomplete`), under the entry lock and only
    when the owner is provably gone. Costs a directory listing when there is nothing.

    `listings` (folder -> names) is shared by the caller across entries: every inspect
    entry lives in the same folder, which is then listed once per run, not once per entry.
    Plain strings, not Paths: this runs once per entry of every unchanged re-run."""
    hf_dir = layers[HF].dir if HF in layers else None
    places = [(os.path.dirname(hf_dir), f".{os.path.basename(hf_dir)}.stale-")] if hf_dir is not None else []
    places += [(str(folder), prefix) for folder, prefix in consumers.get(consumer).leftover_places(roots, call, versions)]
    if listings is None:
        listings = {}
    for folder, _ in places:
        if folder not in listings:
            listings[folder] = [n for n in _listdir(folder) if n.startswith(".") or n.endswith(".incomplete")]
    found = any(n.startswith(prefix) for folder, prefix in places for n in listings[folder])
    # datasets' `<dir>.incomplete` is in the listing of the HF folder's parent (no stat per entry)
    if not found and not (hf_dir is not None and f"{os.path.basename(hf_dir)}.incomplete" in listings[places[0][0]]
                          and os.path.isdir(f"{hf_dir}.incomplete")):
        return []
    key = record_key(call, consumer, versions)
    notes: List[str] = []
    try:
        with locks.hold(locks_dir(roots) / f"{key}.lock", lock_kind, 1.0, lock_stale_s):
            for folder, prefix in places:
                for gone in locks.clean_leftovers(Path(folder), prefix, lock_stale_s):
                    notes.append(f"removed {gone} (left by a builder that is gone)")
            if hf_dir is not None:
                _clean_hf_leftovers(Path(hf_dir), notes, lock_kind, lock_stale_s)
    except LockTimeout:
        return []  # someone is building it right now; they clean up
    return notes


def _listdir(folder: str) -> List[str]:
    try:
        return os.listdir(folder)
    except OSError:
        return []


def _older_than_source(call: LoadCall, source: Fingerprint) -> bool:
    """With no record at all: an existing HF folder written before the source's last
    change (ctime) may hold old rows (e.g. the file was replaced with `cp -p`)."""
    import datasets

    with contextlib.suppress(Exception):
        with in_folder(call.cwd):
            folder = Path(datasets.load_dataset_builder(call.builder, **named(call), **builder_kwargs(call)).cache_dir)
        info = folder / "dataset_info.json"
        if info.exists():
            return info.stat().st_mtime_ns < source.ctime_ns
    return False
