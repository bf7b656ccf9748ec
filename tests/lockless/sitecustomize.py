"""Lock-less file system stand-in, loaded by every Python process started with this folder
on PYTHONPATH (tests/test_concurrency.py, tests/test_crash.py, bench/kill_trials.py).

Why a fake: many NFS / GPFS / Lustre mounts accept flock() but do not make it hold
across nodes, so two processes "holding" the same lock both proceed. That cannot be made
real on one machine with a local file system, so here filelock's FileLock (and the
FileLock subclass `datasets` builds on it, created at its import, after this module
runs) does nothing: datasets' own builder lock stops protecting its cache, exactly as on
such a mount. cluster-agent's site.lock=soft does not use flock at all and must still
keep every build exclusive.
"""

import filelock


class _NoLock:
    """Acquires at once, always, like a flock that does not hold across nodes."""

    def __init__(self, lock_file, *args, **kwargs):
        self.lock_file = str(lock_file)
        self.timeout = kwargs.get("timeout", args[0] if args else -1)
        self._count = 0

    @property
    def is_locked(self):
        return self._count > 0

    @property
    def lock_counter(self):
        return self._count

    def acquire(self, *args, **kwargs):
        self._count += 1
        return self

    def release(self, *args, **kwargs):
        self._count = max(0, self._count - 1)

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


filelock.FileLock = _NoLock
filelock.SoftFileLock = _NoLock
filelock.CLUSTER_AGENT_TEST_LOCKLESS = True
