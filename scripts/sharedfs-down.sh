#!/usr/bin/env bash
# sharedfs-down.sh -- tear down what scripts/sharedfs-up.sh started (safe to run twice,
# and after a crash): unmount inside each node's namespace first (a FUSE mount whose
# daemon is killed first leaves "Transport endpoint is not connected"), then stop every
# daemon (FUSE clients too: they run in the foreground) by its pid file, then remove the work folder's pid files.
set -uo pipefail
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:${PATH:-}"
W="${CLUSTER_AGENT_SHAREDFS_DIR:-/var/lib/cluster-agent-sharedfs}"
[ -d "$W/run" ] || exit 0

alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }
pidof_file() { cat "$W/run/$1.pid" 2>/dev/null || true; }

for n in A B; do
    pid=$(pidof_file "node$n")
    alive "$pid" || continue
    # every FUSE mount of the shared folder inside this node (lazily if busy)
    nsenter -t "$pid" --mount -- sh -c "
        fusermount3 -u '$W/shared' 2>/dev/null || fusermount -u '$W/shared' 2>/dev/null \
          || umount '$W/shared' 2>/dev/null || umount -l '$W/shared' 2>/dev/null" || true
done

# stop: TERM, wait up to 10 s, then KILL (mfsmaster saves its metadata on TERM)
stop() {
    local pid; pid=$(pidof_file "$1")
    alive "$pid" || { rm -f "$W/run/$1.pid"; return 0; }
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 100); do alive "$pid" || break; sleep 0.1; done
    alive "$pid" && kill -KILL "$pid" 2>/dev/null
    rm -f "$W/run/$1.pid"
}
for name in sshfsA sshfsB mfsmountA mfsmountB nodeA nodeB mfschunkserver mfsmaster sshd net; do
    stop "$name"
done
rm -f "$W/kind"
echo "sharedfs-down: stopped" >&2
exit 0
