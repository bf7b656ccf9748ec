"""Generate the benchmark's data and experiment summaries into a git-ignored folder.

    python bench/gen_data.py [--work bench/.work] [--small]

Everything is deterministic (fixed seed) and made only when missing or of the wrong
size, so running it again is cheap. Layout under ``<work>/data``:

    tiny/d0000.json ...       tiny datasets (a few rows each) for re-run and scaling
    tiny-N/experiment_summary.yaml   N tasks, one per tiny dataset (N = the --tiny sizes)
    one/experiment_summary.yaml      one large file (the cold-build benchmark, 92 MB)
    mem/experiment_summary.yaml      one larger file (the peak-memory benchmark, 200 MB)
    eight/experiment_summary.yaml    eight mid-size files (the jobs=2 cold-build benchmark)
    job/experiment_summary.yaml      one file an eval job loads (the consumer-start benchmark)

Each data file is ``{"train": [...], "validation": [...], "test": [rows]}`` with rows
``{"input": ..., "output": ...}`` -- the cruijff_kit layout the jobs read with
``field="test"``. Summaries name datasets by absolute path (no path-hazard warnings).
"""

from __future__ import annotations

import argparse
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Tuple

HERE = Path(__file__).resolve().parent
DEFAULT_WORK = HERE / ".work"

_WORDS = ("garden lantern river cloud saddle harbor marble window pepper copper meadow "
          "falcon anchor violet timber crystal ember willow quartz summit lagoon canyon "
          "orchard beacon thistle cobalt").split()


@dataclass(frozen=True)
class Sizes:
    tiny: Tuple[int, ...] = (10, 20, 100, 1000)  # datasets per re-run / scaling summary
    tiny_rows: int = 20
    one_mb: float = 92.0  # the cold-build file
    mem_mb: float = 200.0  # the peak-memory file
    eight_mb: float = 40.0  # each of the eight files built with jobs=2
    eight_n: int = 8
    job_mb: float = 10.0  # the file one eval job loads (consumer start)


FULL = Sizes()
SMALL = Sizes(tiny=(3, 6), tiny_rows=5, one_mb=0.5, mem_mb=1.0, eight_mb=0.2, eight_n=4, job_mb=0.2)


def _row(rng: random.Random, i: int) -> str:
    words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(2, 9)))
    return json.dumps({"input": f"{i}: {words}", "output": words.title()})


def write_data_file(path: Path, target_bytes: int, seed: int) -> int:
    """Write a data file of about target_bytes (at least one test row); returns its rows.

    Written to a temporary name and renamed, so an interrupted run never leaves a
    half-written file that a later run would take for finished."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    rows = 0
    with open(tmp, "w", encoding="utf-8") as fh:
        head = '{"train": [{"input": "t", "output": "T"}], "validation": [{"input": "v", "output": "V"}], "test": [\n'
        fh.write(head)
        written = len(head)
        chunk: List[str] = []
        while rows == 0 or written < target_bytes:
            line = _row(rng, rows)
            chunk.append(line)
            written += len(line) + 2
            rows += 1
            if len(chunk) >= 10000:
                fh.write(",\n".join(chunk) + ",\n")
                chunk = []
        if chunk:
            fh.write(",\n".join(chunk))
        else:  # drop the trailing ",\n" of the last full chunk
            fh.seek(fh.tell() - 2)
            fh.truncate()
        fh.write("\n]}\n")
    os.replace(tmp, path)
    return rows


def write_summary(folder: Path, name: str, datasets: List[Path]) -> Path:
    """An experiment_summary.yaml in the cruijff_kit layout, one task per dataset."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"experiment:\n  name: {name}\n", "evaluation:\n  tasks:\n"]
    for i, ds in enumerate(datasets):
        lines.append(f"    - name: task{i:04d}\n      script: tasks/eval.py\n      dataset: {ds}\n")
    path = folder / "experiment_summary.yaml"
    text = "".join(lines)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


@dataclass
class Generated:
    work: Path
    summaries: Dict[str, Path] = field(default_factory=dict)  # name -> summary path
    bytes: Dict[str, int] = field(default_factory=dict)  # name -> total data bytes


def _ensure_file(path: Path, mb: float, seed: int, stamps: Dict[str, int]) -> int:
    """Make the file unless it exists with the size recorded when it was made."""
    key = str(path)
    if path.exists() and stamps.get(key) == path.stat().st_size:
        return path.stat().st_size
    write_data_file(path, int(mb * 1e6), seed)
    stamps[key] = path.stat().st_size
    return stamps[key]


def generate(work: Path = DEFAULT_WORK, sizes: Sizes = FULL, verbose: bool = True) -> Generated:
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    stamp_file = data / "stamps.json"
    try:
        stamps = json.loads(stamp_file.read_text())
    except (OSError, ValueError):
        stamps = {}
    out = Generated(work)

    def say(msg: str) -> None:
        if verbose:
            print(f"gen_data: {msg}", flush=True)

    tiny_files = []
    for i in range(max(sizes.tiny)):
        tiny_files.append(data / "tiny" / f"d{i:04d}.json")
        _ensure_file(tiny_files[-1], sizes.tiny_rows * 60 / 1e6, 1000 + i, stamps)
    for n in sizes.tiny:
        out.summaries[f"tiny-{n}"] = write_summary(data / f"tiny-{n}", f"tiny-{n}", tiny_files[:n])
        out.bytes[f"tiny-{n}"] = sum(p.stat().st_size for p in tiny_files[:n])
    say(f"{max(sizes.tiny)} tiny datasets")

    for name, mb, n in (("one", sizes.one_mb, 1), ("mem", sizes.mem_mb, 1), ("eight", sizes.eight_mb, sizes.eight_n),
                          ("job", sizes.job_mb, 1)):
        files = [data / name / f"{name}{i}.json" for i in range(n)]
        total = sum(_ensure_file(p, mb, 7 * (i + 1) + len(name), stamps) for i, p in enumerate(files))
        out.summaries[name] = write_summary(data / name, name, files)
        out.bytes[name] = total
        say(f"{name}: {n} x {mb:g} MB ({total / 1e6:.1f} MB)")
    stamp_file.write_text(json.dumps(stamps, indent=1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK, help="output folder (default bench/.work)")
    ap.add_argument("--small", action="store_true", help="the small sizes CI uses")
    args = ap.parse_args()
    gen = generate(args.work, SMALL if args.small else FULL)
    for name, path in gen.summaries.items():
        print(f"{name:10s} {path}")


if __name__ == "__main__":
    main()
