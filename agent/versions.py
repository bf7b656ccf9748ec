"""Installed distribution versions, read without importing the libraries and without
``importlib.metadata`` (whose import pulls in email parsing and zipfile: 30-50 ms on
every gate and every re-run). Looks for ``<name>-<version>.dist-info/METADATA`` on
``sys.path`` in order, as importlib.metadata does; anything unusual (egg-info, zipped
paths) falls back to importlib.metadata itself.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Dict, Iterable, List, Optional

_listings: Dict[str, List[str]] = {}


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _listing(folder: str) -> List[str]:
    if folder not in _listings:
        try:
            _listings[folder] = [n for n in os.listdir(folder or ".") if n.endswith((".dist-info", ".egg-info"))]
        except NotADirectoryError:  # a zip on sys.path: only importlib.metadata reads those
            _listings[folder] = ["?"]
        except OSError:
            _listings[folder] = []
    return _listings[folder]


_UNSURE = "?"


def _from_dist_info(name: str) -> Optional[str]:
    """The version; None = not installed; _UNSURE = ask importlib.metadata."""
    want = _normalize(name)
    for folder in sys.path:
        for entry in _listing(folder):
            if entry == "?":
                return _UNSURE
            dist = entry.rsplit(".", 1)[0].rsplit("-", 1)[0]
            if _normalize(dist) != want:
                continue
            if entry.endswith(".egg-info"):
                return _UNSURE
            try:
                with open(os.path.join(folder or ".", entry, "METADATA"), encoding="utf-8") as fh:
                    for line in fh:
                        if line.startswith("Version:"):
                            return line.split(":", 1)[1].strip()
                        if not line.strip():
                            break  # end of the headers
            except OSError:
                pass
            return _UNSURE  # found but unreadable
    return None


def version(name: str) -> Optional[str]:
    """The installed version of distribution `name`, None if it is not installed."""
    found = _from_dist_info(name)
    if found != _UNSURE:
        return found
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as _version

    try:
        return _version(name)
    except PackageNotFoundError:
        return None


def versions(names: Iterable[str]) -> Dict[str, Optional[str]]:
    return {n: version(n) for n in names}


KEYING_LIBRARIES = ("datasets", "pyarrow", "inspect_ai")


def for_consumer(consumer: str) -> Dict[str, Optional[str]]:
    """The installed versions that key the caches; ConfigError if the consumer's library is missing."""
    from agent import consumers

    keying = consumers.get(consumer).keying
    out = versions(KEYING_LIBRARIES + tuple(n for n in keying if n not in KEYING_LIBRARIES))
    consumers.get(consumer).check_installed(out)
    return out
