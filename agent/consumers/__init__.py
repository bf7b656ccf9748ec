"""Consumers as plugins: one module per way that eval jobs load their data.

A consumer owns everything that differs between inspect-ai jobs and plain `datasets`
jobs: which cache layers the jobs read (and how the extra ones are built), the library
versions that key those layers, the environment each job must export, how its call is
written out, how the verifier makes it, and the default eval command of the recipes.
The rest of the agent asks the consumer and never branches on its name.

Adding one = a module here defining ``CONSUMER`` + ``conf/consumer/<name>.yaml``
(see docs/design-notes.md). The registry lists the modules of this package, so the
config's ``consumer.kind`` accepts the new name without another edit.

Standard library only at import time (the launch gate uses it).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from agent.entry import Layer, LoadCall
from agent.errors import ConfigError

HF = "hf"  # the `datasets` cache layer every consumer reads or builds on


class Consumer:
    """Base: a consumer that reads only the HF `datasets` cache layer."""

    name = "datasets"
    layers: Tuple[str, ...] = (HF,)  # cache layers the jobs read, in build order
    keying: Tuple[str, ...] = ("datasets",)  # libraries whose versions key those layers
    needs: Optional[Tuple[str, str]] = None  # (distribution, pip extra) that must be installed
    title = "HF datasets"  # for "Pre-building <title> cache"
    extra_title = ""  # what its layers beyond HF are called in messages
    job_passes_data_files = True  # the job writes the data_files string itself (lm-eval's task YAML does)

    # --- the job's side ---------------------------------------------------------------

    def job_env(self, roots: Any, extra: Mapping[str, str]) -> Dict[str, str]:
        """What each job must export to look where the pre-build wrote (DESIGN §5)."""
        env = {"HF_DATASETS_CACHE": str(roots.hf), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def python(self, call: LoadCall, quote: Callable[[str], str] = repr) -> str:
        """The call as a job would write it, for docs, logs, the manifest and the recipes
        (quote=json.dumps: double-quoted literals, to sit inside a '...' shell word)."""
        args = [quote(call.builder)] + [f"{k}={quote(v)}" for k, v in call.kwargs().items()]
        split = [f"split={quote(call.split)}"] if call.split is not None else []
        return f"datasets.load_dataset({', '.join(args + split)})"

    def roots(self, roots: Any) -> Dict[str, Path]:
        """layer -> the cache root the job environment points it at."""
        return {HF: roots.hf}

    def expected(self, roots: Any, call: LoadCall, versions: Mapping[str, Optional[str]]
                 ) -> Dict[str, Tuple[Path, Optional[Path]]]:
        """layer -> (root, the exact folder the job will look up, or None where only
        `datasets` itself can compute it)."""
        return {layer: (root, None) for layer, root in self.roots(roots).items()}

    def conflicts(self, calls: List[LoadCall]) -> Dict[str, str]:
        """call key -> why the jobs of that call cannot all be served from one cache
        (the consumer's key cannot tell them apart). None for `datasets`: its key joins a
        relative path to the job's folder."""
        return {}

    def plan(self, summary: Any, task: Optional[str]) -> Optional[List[Any]]:
        """The entries (agent.entry.EntryRecord) of a consumer that finds its jobs' calls
        itself (lm-eval resolves its tasks); None = the summary's or the cells' calls."""
        return None

    def check_installed(self, versions: Mapping[str, Optional[str]]) -> None:
        if self.needs and versions.get(self.needs[0]) is None:
            raise ConfigError(f"consumer={self.name} needs {self.needs[0].replace('_', '-')}: "
                              f"pip install 'cluster-agent[{self.needs[1]}]', or pass consumer=datasets")

    def eval_command(self, model: Optional[str]) -> str:
        """The recipes' consumer step when --command is not given (placeholders: launcher.eval_jobs)."""
        return "python -c {python_call}"

    # --- the build's side (in the build worker, `datasets` imported) ------------------

    def build_layers(self, call: LoadCall, settings: Any, ds: Any, notes: List[str]) -> Dict[str, Layer]:
        """Layers beyond HF, built from the dataset the HF build returned (settings: build.BuildSettings)."""
        return {}

    def leftover_places(self, roots: Any, call: LoadCall, versions: Mapping[str, Optional[str]]) -> List[Tuple[Path, str]]:
        """(folder, name prefix) where a killed builder of the extra layers leaves temp folders."""
        return []

    # --- the verifier's side (a fresh process with the job environment) ---------------

    def preload(self) -> None:
        """What the verifier imports before its request comes (the job would too)."""
        import datasets  # noqa: F401

    def consume(self, call: Mapping[str, Any]) -> int:
        """Make the job's real call; return the rows it read."""
        import datasets

        from agent.build import in_folder, named, split_arg, total_rows

        job = LoadCall.from_json(call)
        with in_folder(job.cwd):
            return total_rows(datasets.load_dataset(job.builder, **split_arg(job), **named(job), **job.kwargs()))

    def consumer_roots(self) -> List[str]:
        """The cache roots as this process's consumer resolves them (job env applied)."""
        import datasets.config

        return [str(datasets.config.HF_DATASETS_CACHE)]


def names() -> List[str]:
    """Every consumer module in this package (the valid values of consumer.kind)."""
    here = Path(__file__).parent
    return sorted(p.stem for p in here.glob("*.py") if not p.stem.startswith("_"))


_LOADED: Dict[str, Consumer] = {}


def get(name: str) -> Consumer:
    if name not in _LOADED:
        if name not in names():
            raise ConfigError(f"consumer={name}: no such consumer; choose one of {', '.join(names())}")
        _LOADED[name] = importlib.import_module(f"agent.consumers.{name}").CONSUMER
    return _LOADED[name]
