"""site.lock=auto: which file system holds a cache root (agent/fsdetect.py), on local disk.

The mountinfo lines below are copied from real mounts (the two from the rig were read
in its nodes' namespaces; see tests/test_sharedfs.py for the rig itself).
"""

from __future__ import annotations

import json

from agent import fsdetect
from conftest import read_manifest, run_agent, write_records, write_summary

MOUNTINFO = "\n".join([
    "29 1 0:26 / / rw,relatime - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w",
    "40 29 253:1 / /scratch rw,relatime - ext4 /dev/vdb rw",
    "41 40 0:50 / /scratch/gpfs rw,relatime - gpfs gpfs0 rw",
    "42 29 0:51 / /home rw,relatime - nfs4 fs1:/home rw,vers=4.2",
    "66 29 0:40 / /var/lib/cluster-agent-sharedfs/shared rw,nosuid - fuse.sshfs root@127.0.0.1:/x rw",
    r"87 29 0:41 / /mnt/my\040mfs rw,nosuid - fuse mfs\04310.99.0.2:9421 rw,allow_other",
    "88 29 0:42 / /run/user/0/rootless rw - fuse.fuse-overlayfs fuse-overlayfs rw",
])
TABLE = tuple(fsdetect.parse_mountinfo(MOUNTINFO))


def kind(path: str) -> tuple:
    m = fsdetect.mount_of(path, TABLE)
    return m.fstype, m.mount_point, m.network


def test_longest_mount_prefix_decides():
    assert kind("/scratch/gpfs/me/hf") == ("gpfs", "/scratch/gpfs", True)
    assert kind("/scratch/local/hf") == ("ext4", "/scratch", False)
    assert kind("/home/me/.cache") == ("nfs4", "/home", True)
    assert kind("/var/lib/cluster-agent-sharedfs/shared/t") == ("fuse.sshfs", "/var/lib/cluster-agent-sharedfs/shared", True)
    assert kind("/srv/x") == ("overlay", "/", False)


def test_mooseFS_mounts_as_plain_fuse_with_escaped_names():
    m = fsdetect.mount_of("/mnt/my mfs/cache", TABLE)
    assert (m.fstype, m.source, m.network) == ("fuse", "mfs#10.99.0.2:9421", True)
    assert kind("/run/user/0/rootless/x")[2] is False  # a local FUSE overlay is not a network FS


def test_auto_is_flock_on_local_disk_and_recorded_in_the_manifest(tmp_path, caches):
    write_records(tmp_path / "exp" / "d.json", 5)
    summary = write_summary(tmp_path / "exp", [{"name": "t", "dataset": "d.json"}])
    proc = run_agent(f"experiment={summary}", "consumer=datasets", "verify=false")
    assert proc.returncode == 0, proc.stderr
    fs = read_manifest(summary)["filesystem"]
    assert fs["configured"] == "auto" and fs["lock"] == "flock"
    assert fs["hf_cache"]["network"] is False and fs["hf_cache"]["type"]
    assert "LOCK_KIND" not in proc.stderr
    json.dumps(fs)  # plain JSON


def test_explicit_flock_on_a_network_mount_gets_one_warning_line():
    roots = {"hf_cache": "/home/me/hf", "inspect cache": "/scratch/local/xdg"}
    kind_, detected, warnings = fsdetect.resolve_lock("flock", roots, TABLE)
    assert kind_ == "flock" and len(warnings) == 1
    assert "/home/me/hf" in warnings[0] and "nfs4" in warnings[0] and "fs1:/home at /home" in warnings[0]
    kind_, detected, warnings = fsdetect.resolve_lock("auto", roots, TABLE)
    assert (kind_, warnings, detected["lock"]) == ("soft", [], "soft")
    assert fsdetect.resolve_lock("auto", {"hf_cache": "/scratch/local"}, TABLE)[0] == "flock"
    assert fsdetect.resolve_lock("soft", {"hf_cache": "/scratch/local"}, TABLE)[:2] == ("soft", {
        "hf_cache": {"type": "ext4", "mount": "/scratch", "source": "/dev/vdb", "network": False},
        "lock": "soft", "configured": "soft"})
