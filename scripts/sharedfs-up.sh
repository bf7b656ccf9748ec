#!/usr/bin/env bash
# sharedfs-up.sh -- two "nodes" on one REAL shared file system, on one machine
#                   (for cluster-agent tests, bench/sharedfs_trials.py and CI).
#
# Usage (as root):  bash scripts/sharedfs-up.sh sshfs|moosefs
#                   bash scripts/sharedfs-node.sh A|B CMD...   # run CMD "on node A/B"
#                   bash scripts/sharedfs-down.sh
#
# A node is a mount + UTS namespace (hostname nodeA / nodeB) held open by a sleeping
# process, with its OWN client mount of one export at the SAME path ($W/shared): both
# HF caches key on the literal path string, so both nodes must see one path, and each
# client caches attributes and directory entries on its own, as NFS/GPFS clients do.
# The host's own mount namespace never sees the mounts.
#
#   sshfs    sshd on 127.0.0.1:$PORT only (its own config, host key and client key,
#            all under $W/ssh), exporting $W/export; each node mounts it with sshfs's
#            default caches (dcache_timeout=20 s).
#   moosefs  mfsmaster + mfschunkserver in a network namespace of their own with
#            10.99.0.2/32 on its lo (MooseFS refuses 127.x for a chunkserver); the
#            nodes are created inside that network namespace too, so all MooseFS
#            traffic stays in it. Each node mounts with no cross-node locks and
#            NFS-like 3 s caches (mfsattrcacheto=3, mfsentrycacheto=3, ...).
#
# Network traffic is only on 127.0.0.1 or inside the namespace created here.
# Everything lives under one work folder W (CLUSTER_AGENT_SHAREDFS_DIR, default
# /var/lib/cluster-agent-sharedfs): run/*.pid, log/, the export or MooseFS data, and
# W/kind. If bring-up fails half-way, a trap tears down whatever was started.
# Packages are installed if missing (sshfs openssh-server | moosefs-master
# moosefs-chunkserver moosefs-client; fuse3), as scripts/slurm-up.sh does.
set -euo pipefail
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:${PATH:-}"
export DEBIAN_FRONTEND=noninteractive

KIND="${1:-}"
W="${CLUSTER_AGENT_SHAREDFS_DIR:-/var/lib/cluster-agent-sharedfs}"
PORT="${SHAREDFS_SSH_PORT:-2299}"
MFS_IP=10.99.0.2
MFS_OPTS="mfsnobsdlocks,mfsnoposixlocks,mfsattrcacheto=3,mfsentrycacheto=3,mfsdirentrycacheto=3,mfsnegentrycacheto=3"
TIMEOUT="${SHAREDFS_UP_TIMEOUT:-60}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
START=$SECONDS

log() { echo "sharedfs-up: $*" >&2; }
die() {
    log "ERROR: $*"
    local f
    for f in "$W"/log/*.log; do
        [ -s "$f" ] && { echo "----- tail $f -----" >&2; tail -n 15 "$f" >&2; }
    done
    exit 1
}

case "$KIND" in
    sshfs) PKGS=(fuse3 sshfs openssh-server openssh-client) ;;
    moosefs) PKGS=(fuse3 moosefs-master moosefs-chunkserver moosefs-client iproute2) ;;
    *) echo "usage: $0 sshfs|moosefs" >&2; exit 2 ;;
esac
[ "$(id -u)" -eq 0 ] || { log "ERROR: must run as root (namespaces, FUSE mounts)"; exit 1; }

# ---------------------------------------------------------------- install
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]} ..."
    policy_tmp=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then  # keep package scripts from starting daemons
        printf '#!/bin/sh\n# temporary, from cluster-agent scripts/sharedfs-up.sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 0755 /usr/sbin/policy-rc.d
        policy_tmp=1
    fi
    apt_install() {
        apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends \
            -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}"
    }
    if ! apt_install </dev/null >/tmp/cluster-agent-sharedfs-apt.log 2>&1; then
        apt-get -o DPkg::Lock::Timeout=300 update -q </dev/null >>/tmp/cluster-agent-sharedfs-apt.log 2>&1 || true
        apt_install </dev/null >>/tmp/cluster-agent-sharedfs-apt.log 2>&1 \
            || { [ "$policy_tmp" = 1 ] && rm -f /usr/sbin/policy-rc.d; tail -n 20 /tmp/cluster-agent-sharedfs-apt.log >&2;
                 die "apt-get install ${missing[*]} failed (log: /tmp/cluster-agent-sharedfs-apt.log)"; }
    fi
    [ "$policy_tmp" = 1 ] && rm -f /usr/sbin/policy-rc.d
    log "packages installed ($((SECONDS - START)) s)"
fi

# ---------------------------------------------------------------- fresh start
bash "$HERE/sharedfs-down.sh" >/dev/null 2>&1 || true
rm -rf "$W"
mkdir -p "$W"/{run,log,shared}
chmod 0755 "$W"
ok=0
trap '[ "$ok" = 1 ] || bash "$HERE/sharedfs-down.sh" >&2 || true' EXIT

# start_bg NAME CMD...: run CMD in the background, its pid in run/NAME.pid
start_bg() {
    local name=$1; shift
    setsid "$@" </dev/null >>"$W/log/$name.log" 2>&1 &
    echo $! >"$W/run/$name.pid"
}

# start_node A|B [nsenter args]: a sleeping process in new mount + UTS namespaces
# (private propagation: its mounts stay its own), hostname nodeA/nodeB
start_node() {
    local n=$1; shift
    start_bg "node$n" "$@" unshare --mount --uts --propagation private \
        sh -c "hostname node$n && exec sleep infinity"
    local pid; pid=$(cat "$W/run/node$n.pid")
    for _ in $(seq 1 50); do
        [ "$(nsenter -t "$pid" --uts hostname 2>/dev/null)" = "node$n" ] && return 0
        sleep 0.05
    done
    die "node$n namespace did not come up"
}

# wait_mount A|B DAEMON: until the node's mount table shows the shared folder
wait_mount() {
    local deadline=$((SECONDS + TIMEOUT))
    until on "$1" mountpoint -q "$W/shared"; do
        kill -0 "$(cat "$W/run/$2.pid")" 2>/dev/null || die "$2 exited (see $W/log/$2.log)"
        [ "$SECONDS" -lt "$deadline" ] || die "$2: no mount on node$1 after ${TIMEOUT}s"
        sleep 0.1
    done
}

on() { local n=$1; shift; nsenter -t "$(cat "$W/run/node$n.pid")" --mount --uts -- "$@"; }

if [ "$KIND" = sshfs ]; then
    mkdir -p "$W"/ssh "$W"/export /run/sshd
    chmod 0700 "$W/ssh"
    ssh-keygen -q -t ed25519 -N '' -f "$W/ssh/host_key"
    ssh-keygen -q -t ed25519 -N '' -f "$W/ssh/client_key"
    cp "$W/ssh/client_key.pub" "$W/ssh/authorized_keys"
    cat >"$W/ssh/sshd_config" <<EOF
# generated by cluster-agent scripts/sharedfs-up.sh: loopback only, key only
ListenAddress 127.0.0.1
Port $PORT
HostKey $W/ssh/host_key
PidFile $W/run/sshd.real.pid
AuthorizedKeysFile $W/ssh/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
EOF
    cat >"$W/ssh/ssh_config" <<EOF
Host 127.0.0.1
  Port $PORT
  User root
  IdentityFile $W/ssh/client_key
  IdentitiesOnly yes
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  LogLevel ERROR
  BatchMode yes
EOF
    start_bg sshd /usr/sbin/sshd -D -e -f "$W/ssh/sshd_config"
    for _ in $(seq 1 100); do
        ssh -F "$W/ssh/ssh_config" 127.0.0.1 true </dev/null 2>/dev/null && break
        kill -0 "$(cat "$W/run/sshd.pid")" 2>/dev/null || die "sshd exited"
        sleep 0.1
    done
    for n in A B; do
        start_node "$n"
        # -f: the FUSE daemon stays in the foreground, so its pid file is its own
        start_bg "sshfs$n" nsenter -t "$(cat "$W/run/node$n.pid")" --mount -- \
            sshfs -f "root@127.0.0.1:$W/export" "$W/shared" \
            -o "ssh_command=ssh -F $W/ssh/ssh_config" ${SHAREDFS_SSHFS_OPTS:+-o "$SHAREDFS_SSHFS_OPTS"}
        wait_mount "$n" "sshfs$n"
    done
else
    M="$W/mfs"
    mkdir -p "$M"/{master,chunks,etc}
    chown -R mfs:mfs "$M" 2>/dev/null || true
    cp /var/lib/mfs/metadata.mfs.empty "$M/master/metadata.mfs"
    chown mfs:mfs "$M/master/metadata.mfs" 2>/dev/null || true
    cat >"$M/etc/mfsexports.cfg" <<EOF
$MFS_IP/32 / rw,alldirs,admin,maproot=0:0
EOF
    cat >"$M/etc/mfsmaster.cfg" <<EOF
DATA_PATH = $M/master
EXPORTS_FILENAME = $M/etc/mfsexports.cfg
TOPOLOGY_FILENAME = $M/etc/mfstopology.cfg
MATOML_LISTEN_HOST = $MFS_IP
MATOCS_LISTEN_HOST = $MFS_IP
MATOCL_LISTEN_HOST = $MFS_IP
NICE_LEVEL = 0
EOF
    : >"$M/etc/mfstopology.cfg"
    echo "$M/chunks" >"$M/etc/mfshdd.cfg"
    cat >"$M/etc/mfschunkserver.cfg" <<EOF
DATA_PATH = $M/chunks
HDD_CONF_FILENAME = $M/etc/mfshdd.cfg
MASTER_HOST = $MFS_IP
BIND_HOST = $MFS_IP
CSSERV_LISTEN_HOST = $MFS_IP
HDD_LEAVE_SPACE_DEFAULT = 64MiB
NICE_LEVEL = 0
EOF
    # the network namespace: lo up with 10.99.0.2/32, nothing else
    start_bg net unshare --net sleep infinity
    NETPID=$(cat "$W/run/net.pid")
    for _ in $(seq 1 50); do
        [ "$(readlink "/proc/$NETPID/ns/net")" != "$(readlink /proc/self/ns/net)" ] && break
        sleep 0.05
    done
    innet() { nsenter -t "$NETPID" --net -- "$@"; }
    innet ip link set lo up
    innet ip addr add "$MFS_IP/32" dev lo
    start_bg mfsmaster nsenter -t "$NETPID" --net -- mfsmaster -f -c "$M/etc/mfsmaster.cfg" start
    start_bg mfschunkserver nsenter -t "$NETPID" --net -- mfschunkserver -f -c "$M/etc/mfschunkserver.cfg" start
    for n in A B; do
        start_node "$n" nsenter -t "$NETPID" --net --
    done
    deadline=$((SECONDS + TIMEOUT))
    for n in A B; do
        # mfsmount gives up while the master is still loading: start it again until it stays
        while :; do
            start_bg "mfsmount$n" nsenter -t "$(cat "$W/run/node$n.pid")" --mount --net -- \
                mfsmount -f "$W/shared" -H "$MFS_IP" -o "$MFS_OPTS"
            until on "$n" mountpoint -q "$W/shared" || ! kill -0 "$(cat "$W/run/mfsmount$n.pid")" 2>/dev/null; do
                sleep 0.1
            done
            on "$n" mountpoint -q "$W/shared" && break
            kill -0 "$(cat "$W/run/mfsmaster.pid")" 2>/dev/null || die "mfsmaster exited"
            [ "$SECONDS" -lt "$deadline" ] || die "mfsmount on node$n failed for ${TIMEOUT}s"
            sleep 0.5
        done
    done
fi

# ---------------------------------------------------------------- check
# One node writes, the other reads it back through its own mount (chunkserver registered,
# both mounts live). The new name may take a cache period to appear on the other node.
echo "$KIND" >"$W/kind"
on A sh -c "echo up-$$ >'$W/shared/.probe'" || die "write on nodeA failed"
deadline=$((SECONDS + TIMEOUT))
until [ "$(on B cat "$W/shared/.probe" 2>/dev/null)" = "up-$$" ]; do
    [ "$SECONDS" -lt "$deadline" ] || die "nodeB does not see nodeA's write after ${TIMEOUT}s"
    sleep 0.3
done
on A rm -f "$W/shared/.probe"
ok=1
log "$KIND ready in $((SECONDS - START)) s: nodeA and nodeB mount it at $W/shared"
log "run on a node: bash $HERE/sharedfs-node.sh A|B CMD...; stop: bash $HERE/sharedfs-down.sh"
