"""The launch gate runs as the first step of every eval job, so it must stay cheap: it
never imports datasets, inspect_ai, Hydra, OmegaConf or loguru (DESIGN §8, issue 6).

Checked in a fresh interpreter that runs the real entry point (agent.cli.main) on a
really pre-built example and then lists the modules it loaded; and with
``python -X importtime`` on the console script itself. The gate's answer is asserted
too, so a gate that bailed out early cannot pass.
"""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from conftest import CLI
from corehelp import prebuilt_example

HEAVY = ("datasets", "inspect_ai", "hydra", "omegaconf", "loguru", "pyarrow", "pandas")

PROBE = """
import json, sys
from agent.cli import main
rc = main(sys.argv[1:])
loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set(json.loads({heavy!r})))
sys.stderr.write("PROBE " + json.dumps({{"rc": rc, "loaded": loaded}}) + "\\n")
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    env, summary = prebuilt_example(tmp_path_factory.mktemp("gate-imports"))
    return SimpleNamespace(env=env, summary=summary)


def _probe(built, *args):
    import os

    code = PROBE.format(heavy=json.dumps(HEAVY))
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env={**os.environ, **built.env}, timeout=120)
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("PROBE ")]
    assert line, proc.stderr
    return json.loads(line[-1][6:]), proc


@pytest.mark.parametrize("extra", [[], ["task=acs_income"], ["output=json"], ["output=shell", "task=arithmetic"]],
                         ids=["whole", "one-task", "json", "shell"])
def test_gate_ok_imports_no_heavy_library(built, extra):
    result, proc = _probe(built, f"experiment={built.summary}", "action=check", *extra)
    assert result["rc"] == 0, proc.stderr
    assert "GATE_OK" in proc.stderr
    assert result["loaded"] == [], f"the gate imported {result['loaded']}"


def test_refused_gate_imports_no_heavy_library(built, tmp_path):
    result, proc = _probe(built, f"manifest={tmp_path / 'none.json'}", "action=check")
    assert result["rc"] == 3
    assert "GATE_REFUSED" in proc.stderr
    assert result["loaded"] == []


def test_console_script_importtime(built):
    """The same, measured the way the issue names: python -X importtime on the console script."""
    import os

    proc = subprocess.run([sys.executable, "-X", "importtime", CLI, f"experiment={built.summary}", "action=check"],
                          capture_output=True, text=True, env={**os.environ, **built.env}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    imported = {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines()
                if line.startswith("import time:")}
    assert "agent" in imported  # the table really is the gate's
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))
