"""Turning a failed load into one line that names the file and what is wrong with it.

`datasets` reports most bad files as `DatasetGenerationError: An error occurred while
generating the dataset`; the cause is buried. This looks at the file itself, only after
a failure (so the normal path never reads a big file twice).
"""

from __future__ import annotations

import codecs
import json
import os
from typing import Optional

_SNIFF = 1 << 16
_PARSE_LIMIT = 2 << 30  # above 2 GiB, do not json.load the file just to name its fields


def _innermost(exc: BaseException) -> BaseException:
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        nxt = exc.__cause__ or exc.__context__
        if nxt is None:
            break
        exc = nxt
    return exc


def _utf8_error(path: str) -> Optional[int]:
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                return offset + exc.start
            offset += len(chunk)
    return None


def explain(path: str, field: Optional[str], exc: BaseException) -> str:
    """One line: '<path> (<what is wrong>; <what to do>)'."""
    try:
        return f"{path} ({_explain_file(path, field) or _from_exception(exc)})"
    except OSError as err:
        if isinstance(err, FileNotFoundError):
            return f"{path} (no such file)"
        return f"{path} ({err.strerror or err})"


def _from_exception(exc: BaseException) -> str:
    inner = _innermost(exc)
    text = str(inner).strip().splitlines()[0] if str(inner).strip() else ""
    return f"{type(inner).__name__}: {text}"[:300]


def _explain_file(path: str, field: Optional[str]) -> Optional[str]:
    if os.path.isdir(path):
        return "is a folder, expected a data file"
    size = os.path.getsize(path)
    if size == 0:
        return "empty file"
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".parquet":
        return None
    bad = _utf8_error(path)
    if bad is not None:
        return f"not UTF-8 text (bad byte at offset {bad}); is it a binary file?"
    if suffix != ".json" or field is None:
        return None
    with open(path, "rb") as fh:
        head = fh.read(_SNIFF).lstrip()
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:].lstrip()
    if not head:
        return "only whitespace, no JSON"
    if head[:1] == b"[":
        return f"is a JSON array; expected an object whose '{field}' key holds the records"
    if head[:1] != b"{":
        return f"not a JSON object (starts with {head[:10]!r}); expected {{\"{field}\": [...]}}"
    if size > _PARSE_LIMIT:
        return None
    try:
        with open(path, encoding="utf-8-sig") as fh:
            doc = json.load(fh)
    except json.JSONDecodeError as err:
        return f"invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}"
    if field not in doc:
        fields = ", ".join(map(str, doc)) or "none"
        return f"no field '{field}'; fields: {fields}"
    value = doc[field]
    if not isinstance(value, list):
        return f"field '{field}' is a {type(value).__name__}, expected a list of records"
    if value and not all(isinstance(r, dict) for r in value):
        return f"field '{field}' holds non-object items; expected records like {{\"input\": ..., \"output\": ...}}"
    return None
