"""Lists of images as samples: a CSV or a Parquet file with ``path[,label]`` columns, local or at a URL, whose
paths are relative to the list's folder, absolute, or URLs; rows in the list's own order."""
from __future__ import annotations

import csv
import io
import os
import posixpath
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import remote
from ..errors import UsageError
from .samples import SampleList, labelled

LIST_SUFFIXES = (".csv", ".parquet", ".pq")
LIST_CHUNK = 65536  # Parquet rows read at a time


def _list_path(cell: str, root: Path | str) -> tuple[str, str | None]:
    """A list's path cell as stored (relative to the list's folder where inside it; URLs without query),
    and where to read it when that differs."""
    text = remote.local_path(cell.strip())
    if remote.is_url(text):
        clean = remote.clean_url(text)
        return clean, (text if clean != text else None)
    if isinstance(root, str):  # a list at a URL: relative paths are inside its folder
        if os.path.isabs(text):
            return text, None
        return posixpath.normpath(text), None
    p = Path(text)
    if p.is_absolute():
        try:
            p = p.relative_to(root)
        except ValueError:
            pass  # stays absolute: outside the list's folder
    return p.as_posix(), None


def _list_root(location: str) -> Path | str:
    if remote.is_url(location):
        return remote.clean_url(location).rsplit("/", 1)[0]
    return Path(remote.local_path(location)).resolve().parent


def _csv_rows(location: str, options: Mapping[str, Any]):
    """(line number, header or row) of a CSV, local or remote, streamed."""
    try:
        raw = remote.open_file(location, options)
    except OSError as exc:
        raise remote.access_error(location, exc, options) from None
    with raw, io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as f:
        yield from enumerate(csv.reader(f), start=1)


def from_csv(location: str, options: Mapping[str, Any]) -> SampleList:
    shown = remote.clean_url(location)
    root = _list_root(location)
    rows = _csv_rows(location, options)
    first = next(rows, None)
    if first is None:
        raise UsageError(f"CSV {shown!r} is empty; give a header 'path[,label]' and one row per image")
    header = [h.strip().lower() for h in first[1]]
    if "path" not in header:
        raise UsageError(f"CSV {shown!r} has columns {first[1]}, needs a 'path' column (and optionally 'label')")
    ip = header.index("path")
    il = header.index("label") if "label" in header else None
    paths, names, reads = [], [], {}
    for lineno, row in rows:
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) <= ip:
            raise UsageError(f"CSV {shown!r} line {lineno} has no path: {row}")
        path, read = _list_path(row[ip], root)
        if read is not None:
            reads[len(paths)] = read
        paths.append(path)
        names.append(row[il].strip() if il is not None and il < len(row) else "")  # no label: -1
    return labelled(root, paths, names, reads, options)


def from_parquet(location: str, options: Mapping[str, Any]) -> SampleList:
    """A Parquet list, read LIST_CHUNK rows at a time (lists of millions of images)."""
    shown = remote.clean_url(location)
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UsageError(f"reading the Parquet list {shown!r} needs pyarrow: pip install '{remote.CLOUD_EXTRA}'") \
            from None
    root = _list_root(location)
    try:
        raw = remote.open_file(location, options)
    except OSError as exc:
        raise remote.access_error(location, exc, options) from None
    paths, names, reads = [], [], {}
    with raw:
        try:
            pf = pq.ParquetFile(raw)
        except Exception as exc:  # noqa: BLE001 - pyarrow's errors for a file that is not Parquet vary
            raise UsageError(f"{shown!r} is not a Parquet file ({remote.describe_error(exc, options)})") from None
        columns = {name.lower(): name for name in pf.schema_arrow.names}
        if "path" not in columns:
            raise UsageError(f"Parquet list {shown!r} has columns {pf.schema_arrow.names}, needs a 'path' column "
                             "(and optionally 'label')")
        wanted = [columns["path"]] + ([columns["label"]] if "label" in columns else [])
        for batch in pf.iter_batches(batch_size=LIST_CHUNK, columns=wanted):
            cells = batch.column(0).to_pylist()
            labels = batch.column(1).to_pylist() if len(wanted) > 1 else [None] * len(cells)
            for cell, label in zip(cells, labels, strict=True):
                if cell is None or not str(cell).strip():
                    continue
                path, read = _list_path(str(cell), root)
                if read is not None:
                    reads[len(paths)] = read
                paths.append(path)
                names.append("" if label is None else str(label).strip())
    return labelled(root, paths, names, reads, options)
