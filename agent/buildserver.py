"""What the build workers' fork server imports once (agent.schedule, jobs > 1).

The server starts with the job environment in os.environ, imports `datasets` (which
reads it at import), and every build worker is forked from it with `datasets` already
imported: two workers no longer pay ~1.2 s of CPU each for the same import while the
verifier pays a third on the same two cores (issue 14, measured in docs/benchmarks.md).
"""

import contextlib

with contextlib.suppress(Exception):  # a broken install fails in the build itself, with its own message
    import datasets  # noqa: F401

import agent.build  # noqa: F401,E402  (what every worker runs)

import gc  # noqa: E402

# What the server imported stays put in every worker: kept out of their garbage
# collections, it is neither walked again nor copied page by page (copy-on-write).
gc.freeze()
