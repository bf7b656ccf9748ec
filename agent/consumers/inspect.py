"""consumer=inspect: jobs call inspect_ai.dataset.hf_dataset(path=builder, data_files=..., field=..., split=...).

Two layers: the HF `datasets` cache, and inspect-ai's own ``hf_datasets`` cache, which a
job uses if its folder merely exists (inspect-ai writes it in place with no lock, so we
publish it whole: ``save_to_disk`` into a temporary folder, then a rename). Its folder
name is inspect-ai's key, recomputed without importing inspect-ai (agent.layers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from agent.consumers import HF, Consumer
from agent.entry import Layer, LoadCall

INSPECT = "inspect"  # the layer's name (the consumer shares it)


class InspectConsumer(Consumer):
    name = "inspect"
    layers = (HF, INSPECT)
    keying = ("datasets", "inspect_ai")
    needs = ("inspect_ai", "inspect")
    title = "HF datasets + inspect-ai"
    extra_title = "inspect-ai"

    def job_env(self, roots: Any, extra: Mapping[str, str]) -> Dict[str, str]:
        env = {"HF_DATASETS_CACHE": str(roots.hf), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "XDG_CACHE_HOME": str(roots.xdg)}  # inspect-ai ignores HF_HOME, follows platformdirs
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def python(self, call: LoadCall, quote: Callable[[str], str] = repr) -> str:
        args = [f"path={quote(call.builder)}"] + [f"{k}={quote(v)}" for k, v in call.kwargs().items()]
        return f"inspect_ai.dataset.hf_dataset({', '.join(args + [f'split={quote(call.split)}'])})"

    def roots(self, roots: Any) -> Dict[str, Path]:
        return {HF: roots.hf, INSPECT: roots.inspect}

    def expected(self, roots: Any, call: LoadCall, versions: Mapping[str, Optional[str]]
                 ) -> Dict[str, Tuple[Path, Optional[Path]]]:
        from agent.layers import inspect_folder

        return {HF: (roots.hf, None),
                INSPECT: (roots.inspect, inspect_folder(roots, call, versions.get("inspect_ai") or "0"))}

    def eval_command(self, model: Optional[str]) -> str:
        if not model:
            from agent.errors import LaunchError

            raise LaunchError("consumer=inspect: pass --model NAME for `inspect eval` (e.g. vllm/<path>), "
                              "or --command TEMPLATE")
        # the arguments the task scripts of the client's shape (and examples/tasks/) take
        return "inspect eval {script} --model {model} -T data_path={data_files} {split_arg}"

    def conflicts(self, calls: List[LoadCall]) -> Dict[str, str]:
        """inspect-ai keys its cache on the data_files *string*: one relative string that
        names different files from different job folders would share one cache folder,
        and every job but the first would silently read another file's rows."""
        import os

        from agent.layers import inspect_key_message

        groups: Dict[str, List[LoadCall]] = {}
        for call in calls:
            groups.setdefault(inspect_key_message(call, "0.3.285"), []).append(call)
        out: Dict[str, str] = {}
        for same in groups.values():
            if len(same) < 2:  # one call per key: nothing to tell apart (and no realpath per entry)
                continue
            files = {os.path.realpath(c.source()) for c in same}
            if len(files) > 1:
                where = "; ".join(f"from {c.cwd} it names {os.path.realpath(c.source())}" for c in same)
                for c in same:
                    out[c.key()] = (f"{c.data_files} (inspect-ai keys its cache on this string alone, but {where}: "
                                    "the jobs would share one inspect cache folder and read one file's rows; "
                                    "pass absolute paths in the cells)")
        return out

    # --- build ---------------------------------------------------------------------------

    def build_layers(self, call: LoadCall, settings: Any, ds: Any, notes: List[str]) -> Dict[str, Layer]:
        from agent import locks
        from agent.build import publish_folder
        from agent.layers import inspect_folder, snapshot_layer

        target = inspect_folder(settings.roots, call, settings.versions.get("inspect_ai") or "0")
        from agent.netfs import ensure_dir  # tolerant of another node's fresh folder

        ensure_dir(target.parent)
        for gone in locks.clean_leftovers(target.parent, f".{target.name}.", settings.lock_stale_s):
            notes.append(f"removed {gone} (left by a builder that is gone)")
        tmp = target.with_name(f".{target.name}.tmp-{locks.owner_tag()}")
        import shutil

        try:
            ds.save_to_disk(str(tmp))
            share_arrow_file(ds, tmp)  # half the disk when the bytes are the HF layer's
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # never leave half a folder behind
            raise
        if target.exists():
            notes.append(f"replaced inspect cache {target}")
        publish_folder(tmp, target)
        return {INSPECT: snapshot_layer(target)}

    def leftover_places(self, roots: Any, call: LoadCall, versions: Mapping[str, Optional[str]]) -> List[Tuple[Path, str]]:
        from agent.layers import inspect_folder

        target = inspect_folder(roots, call, versions.get("inspect_ai") or "0")
        return [(target.parent, f".{target.name}.")]

    # --- verify --------------------------------------------------------------------------

    def preload(self) -> None:
        import inspect_ai.dataset  # noqa: F401

    def consume(self, call: Mapping[str, Any]) -> int:
        from inspect_ai.dataset import Sample, hf_dataset

        def to_sample(record: Dict[str, Any]) -> Sample:
            return Sample(input=str(record.get("input", "")), target=str(record.get("output", "")))

        from agent.build import in_folder, named

        job = LoadCall.from_json(call)
        with in_folder(job.cwd):
            # limit: the verifier's (agent.verify), not part of inspect-ai's cache key
            return len(hf_dataset(path=job.builder, split=job.split, **named(job), sample_fields=to_sample,
                                  limit=call.get("limit"), **job.kwargs()))

    def consumer_roots(self) -> List[str]:
        from platformdirs import user_cache_path  # what inspect_ai._util.appdirs uses

        return super().consumer_roots() + [str(user_cache_path("inspect_ai") / "hf_datasets")]


def share_arrow_file(ds: Any, saved: Path) -> Optional[str]:
    """Store the inspect layer's Arrow data once: when `save_to_disk` wrote one Arrow file
    with the very bytes of the HF layer's one Arrow file, on the same file system, it is
    replaced by a hard link to that file. Returns the HF file it now shares, else None
    (the copy stays: another file system, several shards, other bytes, no hard links).

    Measured (issue 14): the two files are byte-identical for a one-file `json` build, so
    the cache's disk use halves. Nothing later can break the link's data: `datasets` never
    writes an Arrow file in place (it writes a new file and renames), and deleting the HF
    folder (a clean-up, a rebuild, `rm -rf`) removes a name, not the data the other name
    holds (tests/test_inspect_layer.py reads it back with the real inspect-ai call)."""
    import contextlib
    import filecmp
    import os

    sources = [f["filename"] for f in ds.cache_files]
    arrows = sorted(saved.glob("*.arrow"))
    if len(sources) != 1 or len(arrows) != 1:
        return None
    hf_file, copy = sources[0], arrows[0]
    link = copy.with_name(f".{copy.name}.link")
    try:
        a, b = os.stat(hf_file), os.stat(copy)
        if a.st_dev != b.st_dev or a.st_size != b.st_size or not filecmp.cmp(hf_file, copy, shallow=False):
            return None
        os.link(hf_file, link)
        os.replace(link, copy)  # the folder is not published yet: no job sees the swap
    except OSError:  # EXDEV, EPERM, a file system without hard links: keep the copy
        with contextlib.suppress(OSError):
            link.unlink()
        return None
    return hf_file


CONSUMER = InspectConsumer()
