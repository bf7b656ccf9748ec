#!/usr/bin/env bash
# The project's test command (README "Run the tests"; .ci/run calls exactly this).
# Creates .venv if needed, installs cluster-agent with its inspect, lm-eval and test extras
# (tests/test_lmeval.py runs real lm-eval; the extra is spelled lm-eval, which every pip accepts),
# brings up the real single-node SLURM cluster (scripts/slurm-up.sh, needs root), runs
# pytest with every marker (slow and slurm tests included), and takes the cluster down.
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not slurm" -x
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[inspect,test,lm-eval]'

# the shared-FS rig is brought up and down by the sharedfs tests' fixture; taking it
# down here too covers a pytest that was killed mid-test
cleanup() { bash scripts/slurm-down.sh >/dev/null 2>&1 || true; bash scripts/sharedfs-down.sh >/dev/null 2>&1 || true; }
trap 'bash scripts/sharedfs-down.sh >/dev/null 2>&1 || true' EXIT
if [ "${SKIP_SLURM:-0}" != "1" ]; then
  trap cleanup EXIT
  bash scripts/slurm-up.sh
fi

set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: treating that as a failure" >&2
  rc=1
fi
exit "$rc"
