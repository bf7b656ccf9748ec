#!/usr/bin/env bash
# slurm-down.sh -- tear down the single-node SLURM cluster started by
#                  scripts/slurm-up.sh.
#
# Usage (as root):   bash scripts/slurm-down.sh
#
# Stops, in this order:
#   1. running jobs: SIGKILL to every slurmstepd and its descendants (no
#      cgroups here, so the jobs' processes are found via the process tree);
#   2. slurmctld and slurmd together: SIGTERM to the pids in the pid files
#      under /var/lib/cluster-agent-slurm/run (or $CLUSTER_AGENT_SLURM_DIR/run)
#      and to any other process with exactly that name, SIGKILL after 5 s;
#   3. munged (/run/munge/munged.pid) the same way.
# Tolerant when nothing is running; always exits 0.  Packages, config
# (/etc/slurm/slurm.conf), logs and the munge key are left in place, so the
# next slurm-up.sh is fast.  No systemd here, so no systemctl.
# Exited daemons may linger as zombies for a few seconds (PID 1 in these
# containers is not a real init and reaps slowly); they count as stopped.
# Pid lists are split on purpose:
# shellcheck disable=SC2086,SC2116
set -uo pipefail

export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:${PATH:-}"
SLURM_DIR="${CLUSTER_AGENT_SLURM_DIR:-/var/lib/cluster-agent-slurm}"

# pids NAME [PIDFILE]: pid from PIDFILE (if alive and named NAME) plus all
# processes named exactly NAME.
pids() {
    local name="$1" pidfile="${2:-}" pid
    {
        if [ -n "$pidfile" ] && [ -s "$pidfile" ]; then
            pid="$(cat "$pidfile" 2>/dev/null)"
            if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ]; then
                echo "$pid"
            fi
        fi
        pgrep -x "$name" 2>/dev/null
    } | sort -u | while read -r pid; do
        # skip zombies (PID 1 here is not a real init and reaps slowly)
        grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null || echo "$pid"
    done
}

# stop NAME:PIDFILE...: SIGTERM all of them at once, wait up to ~5 s for them
# to exit, then SIGKILL what is left.
stop() {
    local spec name pidfile p all="" left
    for spec in "$@"; do
        name="${spec%%:*}" pidfile="${spec#*:}"
        p="$(pids "$name" "$pidfile")"
        if [ -n "$p" ]; then
            echo "slurm-down: stopping $name ($(echo $p))" >&2
            all="$all $p"
        fi
    done
    if [ -n "$all" ]; then
        kill -TERM $all 2>/dev/null
        for _ in $(seq 1 50); do
            left=""
            for p in $all; do
                # gone, or a zombie (already exited)
                if [ -e "/proc/$p" ] && ! grep -q '^State:.*Z' "/proc/$p/status" 2>/dev/null; then
                    left="$left $p"
                fi
            done
            [ -z "$left" ] && break
            sleep 0.1
        done
        if [ -n "$left" ]; then
            echo "slurm-down: still running after 5 s, sending SIGKILL:$left" >&2
            kill -KILL $left 2>/dev/null
            sleep 0.2
        fi
    fi
    for spec in "$@"; do
        pidfile="${spec#*:}"
        [ -n "$pidfile" ] && rm -f "$pidfile"
    done
    return 0
}

# descendants PID...: all descendant pids of the given pids (one ps call).
descendants() {
    ps -eo pid=,ppid= | awk -v roots="$*" '
        BEGIN { n = split(roots, r, " "); for (i = 1; i <= n; i++) want[r[i]] = 1 }
        { parent[$1] = $2 }
        END {
            do {
                added = 0
                for (p in parent)
                    if (!(p in want) && (parent[p] in want)) { want[p] = 1; added = 1; print p }
            } while (added)
        }'
}

# Jobs: kill the jobs' processes (linuxproc, no cgroups: found via the
# process tree) and their slurmstepd; no need to be gentle with them.
steps="$(pids slurmstepd)"
if [ -n "$steps" ]; then
    echo "slurm-down: killing job steps (slurmstepd $(echo $steps)) and their processes" >&2
    jobprocs="$(descendants $steps)"
    kill -KILL $steps $jobprocs 2>/dev/null
fi
# Daemons in parallel; munged last (the slurm daemons use it until they exit).
stop "slurmctld:$SLURM_DIR/run/slurmctld.pid" "slurmd:$SLURM_DIR/run/slurmd.pid"
stop "munged:/run/munge/munged.pid"
rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
echo "slurm-down: SLURM cluster is down" >&2
exit 0
