"""Where each cache layer lives, and whether what is on disk is whole.

Nothing here imports `datasets` or `inspect_ai`: the launch gate and the unchanged
re-run use it. inspect-ai's folder name is recomputed with `mmh3` + `platformdirs`, the
two libraries inspect-ai itself uses for it (cross-checked against inspect's own helpers
in tests/test_inspect_layer.py, which also runs the real hf_dataset of
inspect-ai 0.3.220 and 0.3.221 to check both key forms).
"""

from __future__ import annotations

import functools
import os
import re
import string
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

from agent.entry import REQUIRED, Layer, LoadCall, layer_problems  # noqa: F401 - re-exported

# layer names (the keys of an entry's `layers`), not consumer names: see agent.consumers
HF = "hf"
INSPECT = "inspect"


@dataclass(frozen=True)
class CacheRoots:
    """Absolute cache locations as the jobs will see them (from the job environment)."""

    hf: Path  # what HF_DATASETS_CACHE resolves to
    xdg: Path  # XDG_CACHE_HOME; inspect-ai's cache is <xdg>/inspect_ai

    @property
    def inspect(self) -> Path:
        return self.xdg / "inspect_ai" / "hf_datasets"


def resolve_roots(hf_cache: Optional[Path], xdg_cache_home: Optional[Path], environ: Mapping[str, str]) -> CacheRoots:
    """Resolve like `datasets` and platformdirs do when the site leaves a root unset."""
    home = os.path.expanduser("~")
    xdg = xdg_cache_home or Path(os.path.abspath(os.path.expanduser(environ.get("XDG_CACHE_HOME") or os.path.join(home, ".cache"))))
    if hf_cache is None:
        if environ.get("HF_DATASETS_CACHE"):
            hf_cache = Path(environ["HF_DATASETS_CACHE"])
        else:
            hf_home = environ.get("HF_HOME") or os.path.join(environ.get("XDG_CACHE_HOME") or os.path.join(home, ".cache"), "huggingface")
            hf_cache = Path(hf_home) / "datasets"
        hf_cache = Path(os.path.abspath(os.path.expanduser(str(hf_cache))))
    return CacheRoots(hf=hf_cache, xdg=xdg)


# --- inspect-ai's key ------------------------------------------------------------------


@functools.lru_cache(maxsize=16)  # asked for every entry of a run
def _version_tuple(version: str) -> tuple:
    return tuple(int(p) for p in re.findall(r"\d+", version)[:3])


def inspect_key_message(call: LoadCall, inspect_version: str) -> str:
    """The string inspect-ai's hf_dataset hashes (inspect_ai/dataset/_sources/hf.py).

    0.3.221 and later: f"{path}{name}{data_dir}{split}{revision}{kwargs}"; earlier releases
    (0.3.220 and before) hash f"{path}{name}{data_dir}{split}{kwargs}".
    """
    kwargs = call.kwargs()
    if _version_tuple(inspect_version) >= INSPECT_REVISION_IN_KEY:
        return f"{call.builder}{call.name}{call.data_dir}{call.split}{call.revision}{kwargs}"
    return f"{call.builder}{call.name}{call.data_dir}{call.split}{kwargs}"


# First release whose key includes {revision}: 0.3.221. Verified from the PyPI wheels
# (`pip download --no-deps inspect-ai==V`, inspect_ai/dataset/_sources/hf.py): 0.3.220
# hashes f"{path}{name}{data_dir}{split}{kwargs}", 0.3.221 (and 0.3.222/223/228/247/285)
# f"{path}{name}{data_dir}{split}{revision}{kwargs}". tests/test_inspect_layer.py runs the
# real hf_dataset of both releases and compares the folder it writes with ours.
INSPECT_REVISION_IN_KEY = (0, 3, 221)


def mm3_hash(message: str) -> str:
    import mmh3

    h1, h2 = mmh3.hash64(message.encode("utf-8", errors="backslashreplace"))
    return f"{h1 & 0xFFFFFFFFFFFFFFFF:016x}{h2 & 0xFFFFFFFFFFFFFFFF:016x}"


@functools.lru_cache(maxsize=64)  # the builder's name, for every entry of a run
def safe_filename(s: str, max_length: int = 255) -> str:
    """inspect_ai._util.file.safe_filename, for the names we need (builders like 'json')."""
    s = unicodedata.normalize("NFKD", s).encode("ASCII", "ignore").decode("ASCII")
    safe = string.ascii_letters + string.digits + ".-_"
    s = re.sub(r"_+", "_", "".join(c if c in safe else "_" for c in s)).strip("._")
    s = s or "untitled"
    return s[:max_length]


# id(call) -> (the call, roots, version, folder): a run asks for each entry's folder three
# times (reuse, the leftover sweep, the build); the call itself is held, so an id is
# never taken for another object's
_folders: dict = {}


def inspect_folder(roots: CacheRoots, call: LoadCall, inspect_version: str) -> Path:
    seen = _folders.get(id(call))
    if seen is not None and seen[0] is call and seen[1] == roots and seen[2] == inspect_version:
        return seen[3]
    folder = roots.inspect / f"{safe_filename(call.builder)}-{mm3_hash(inspect_key_message(call, inspect_version))}"
    if len(_folders) > 100_000:
        _folders.clear()
    _folders[id(call)] = (call, roots, inspect_version, folder)
    return folder


# --- what a whole layer looks like ------------------------------------------------------


def snapshot_layer(folder: Path) -> Layer:
    """Record a freshly built layer: every regular file with its size."""
    files = {}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.is_file(follow_symlinks=False):
            files[entry.name] = entry.stat().st_size
    return Layer(str(folder), files)
