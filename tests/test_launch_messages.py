"""What `launcher=slurm` says when SLURM itself is the problem: with no controller answering,
the error must not blame site.slurm.*, and the refused script must not stay behind.

No daemon is started or stopped: the real `sbatch` client is pointed (SLURM_CONF) at a
controller address where nothing listens, which is what a down slurmctld looks like."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

from conftest import run_agent
from corehelp import assert_one_error_line


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def down_controller(tmp_path: Path) -> dict:
    if shutil.which("sbatch") is None:
        pytest.skip("the SLURM client (sbatch) is not installed")
    conf = tmp_path / "slurm-down.conf"
    conf.write_text(f"ClusterName=down\nSlurmctldHost=localhost(127.0.0.1)\nSlurmctldPort={_free_port()}\n"
                    "AuthType=auth/none\nCredType=cred/none\nMessageTimeout=2\n"
                    "NodeName=localhost CPUs=1 State=UNKNOWN\nPartitionName=debug Nodes=localhost Default=YES\n")
    return {"SLURM_CONF": str(conf)}


def test_controller_down_is_not_blamed_on_the_site_profile(example: Path, tmp_path: Path, down_controller) -> None:
    proc = run_agent("launcher=slurm", f"experiment={example}", env=down_controller, cwd=tmp_path)
    line = assert_one_error_line(proc)
    assert "could not reach the SLURM controller" in line and "site.slurm" not in line.split("):", 1)[1]
    assert proc.stdout == ""
    assert not list(example.parent.rglob("*.sbatch")), "the refused script was left behind"


def test_controller_down_with_json_is_one_document(example: Path, tmp_path: Path, down_controller) -> None:
    import json

    proc = run_agent("launcher=slurm", f"experiment={example}", "output=json", env=down_controller, cwd=tmp_path)
    doc = json.loads(proc.stdout)
    assert proc.returncode == 2 and doc["exit"] == 2 and "SLURM controller" in doc["error"]
