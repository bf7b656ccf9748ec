#!/usr/bin/env bash
# sharedfs-node.sh A|B CMD... -- run CMD "on node A/B" of scripts/sharedfs-up.sh: in
# that node's mount + UTS namespaces (its own client mount of the shared folder, its
# hostname nodeA/nodeB), in the current working directory, with the caller's
# environment. The exit code is CMD's.
set -euo pipefail
W="${CLUSTER_AGENT_SHAREDFS_DIR:-/var/lib/cluster-agent-sharedfs}"
case "${1:-}" in
    A|B) node=$1; shift ;;
    *) echo "usage: $0 A|B CMD..." >&2; exit 2 ;;
esac
[ "$#" -gt 0 ] || { echo "usage: $0 A|B CMD..." >&2; exit 2; }
pid=$(cat "$W/run/node$node.pid" 2>/dev/null) && kill -0 "$pid" 2>/dev/null \
    || { echo "sharedfs-node: node$node is not running: bash scripts/sharedfs-up.sh sshfs|moosefs" >&2; exit 2; }
exec nsenter -t "$pid" --mount --uts --wd="$PWD" -- "$@"
