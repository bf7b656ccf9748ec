"""Today's workaround, the baseline every benchmark compares against.

    python bench/baseline.py path/to/experiment_summary.yaml

What users run before launching an eval sweep (issue 6): read the summary with PyYAML,
collect the unique ``evaluation.tasks[].dataset`` paths, and call
``load_dataset("json", data_files=p, field="test", split="train")`` on each, printing one
status line per path. (The eval jobs are then submitted with a 5-second stagger; that
part belongs to the submit benchmark, not here.) It builds only the HF layer, keeps no
record, and re-does every call on every run; the caches go wherever the environment
(HF_DATASETS_CACHE / HF_HOME) points. It runs offline (HF_HUB_OFFLINE=1,
HF_DATASETS_OFFLINE=1 unless the environment says otherwise), as the jobs do.

Exit code 0 when every path loaded, 1 otherwise.
"""

from __future__ import annotations

import os
import sys


def main(argv: list) -> int:
    if len(argv) != 1:
        sys.stderr.write("usage: baseline.py experiment_summary.yaml\n")
        return 2
    import yaml

    summary_path = argv[0]
    with open(summary_path, encoding="utf-8") as fh:
        summary = yaml.safe_load(fh)
    folder = os.path.dirname(os.path.abspath(summary_path))
    paths = []
    for task in summary["evaluation"]["tasks"]:
        path = task.get("dataset")
        if path and path not in paths:
            paths.append(path)

    # Offline, as the eval jobs run (the manifest's job environment sets both): without
    # them every load_dataset first tries the Hub, which on a network-less node stalls in
    # DNS and made the baseline's re-run look 5-8x slower than it is (issue 14).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from datasets import load_dataset

    failed = 0
    for path in paths:
        # relative paths as users write them resolve against the summary's folder
        full = os.path.join(folder, path)
        try:
            ds = load_dataset("json", data_files=full, field="test", split="train")
            print(f"OK {full} ({ds.num_rows} rows)", flush=True)
        except Exception as exc:  # noqa: BLE001 - the workaround reports and moves on
            failed += 1
            print(f"FAILED {full}: {type(exc).__name__}: {exc}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
