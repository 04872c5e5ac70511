"""Where pool rows come from: files, directories, ``save_to_disk`` folders and the hub.

Kept apart from the row formats (`stagealign.data.formats`) and the pool assembly
(`stagealign.data.pool`) so that anything that only needs to peek at rows (the dry run reads the
first row of a pool) can do so without the cleaning logic, and so that a new kind of input is
added here alone.

A `source` is a local ``.jsonl`` / ``.json`` / ``.parquet`` file, a directory of such files (the
files of `split` when their names say which split they hold, else all of them), a
``datasets.save_to_disk`` directory, or a Hugging Face hub name ``org/name`` (loaded with
``datasets.load_dataset(name, split=split)``; see `stagealign.hub` for the path-or-hub rule).

A ``.json`` file may hold a JSON array of rows, JSON lines, or one object whose ``instances`` list
holds the rows (LMFlow's ``{"type": "text_only", "instances": [...]}``, which RLHFlow's Online-RLHF
writes). Every row comes with its location: ``file:line`` for JSON lines, ``file row N`` or
``name[split] row N`` otherwise. Structural problems (no such file, unreadable file, bytes that
are not UTF-8, a broken JSON line) raise `LoaderError` with that location at once.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stagealign.artifacts import ArtifactError, iter_jsonl_lines
from stagealign.hub import FILE_SUFFIXES, is_hub_name

#: (location, row) pairs of one file or dataset.
Rows = Iterator[tuple[str, dict[str, Any]]]


class LoaderError(ValueError):
    """A pool source is unreadable or not in a supported format; the message says where."""


def iter_sources(source: str, split: str) -> Iterator[tuple[str, Rows]]:
    """(label, rows) for each file or dataset that `source` stands for, in a stable order.

    Rows are read lazily, so a caller may stop after the first one.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        yield from _iter_directory(path, split)
    elif path.exists():
        yield str(path), _iter_file(path)
    elif is_hub_name(source):
        yield f"{source}[{split}]", _iter_hub(source, split)
    else:
        raise LoaderError(f"{source}: no such file")


def count_rows(source: str | Path) -> int | None:
    """Rows in one local file when cheap to count (JSON lines, a JSON array or ``instances``
    object, Parquet metadata), else None (a directory, a hub name, an unreadable file).

    Here, next to the readers, so that a count (the dry run's cost estimate) and a load agree on
    what a row is.
    """
    path = Path(source).expanduser()
    suffix = path.suffix.lower()
    try:
        if not path.is_file():
            return None
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return int(pq.ParquetFile(path).metadata.num_rows)
        if suffix == ".json":
            data = path.read_bytes()
            if data.lstrip().startswith(b"["):
                return len(json.loads(data))
            whole = _one_object(data)
            if isinstance(whole, dict) and isinstance(whole.get("instances"), list):
                return len(whole["instances"])
        if suffix in (".jsonl", ".json"):
            with open(path, "rb") as fh:
                return sum(1 for line in fh if line.strip())
    except Exception:  # noqa: BLE001 - a count is a courtesy: OSError, JSON, Arrow errors alike
        return None
    return None


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (library errors can run to pages)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _iter_file(path: Path) -> Rows:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _iter_jsonl_rows(path)
    if suffix == ".json":
        return _iter_json_rows(path)
    if suffix == ".parquet":
        return _iter_parquet_rows(path)
    raise LoaderError(f"{path}: unsupported file type {suffix!r} (expected {', '.join(FILE_SUFFIXES)})")


def _iter_jsonl_rows(path: Path) -> Rows:
    """`artifacts.iter_jsonl_lines`, with its errors as `LoaderError` and ``file:line`` locations."""
    try:
        for lineno, row in iter_jsonl_lines(path):
            yield f"{path}:{lineno}", row
    except ArtifactError as exc:
        raise LoaderError(str(exc)) from None
    except OSError as exc:
        raise LoaderError(f"{path}: cannot read ({exc.strerror})") from None


def _iter_json_rows(path: Path) -> Rows:
    """A ``.json`` file holds a JSON array of objects, JSON lines, or one object whose
    ``instances`` list holds the rows (LMFlow's ``{"type": "text_only", "instances": [...]}``,
    which RLHFlow's Online-RLHF writes)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LoaderError(f"{path}: cannot read ({exc.strerror})") from None
    if not data.lstrip().startswith(b"["):
        whole = _one_object(data)
        if isinstance(whole, dict) and isinstance(whole.get("instances"), list):
            yield from _numbered_rows(path, whole["instances"])
            return
        if isinstance(whole, dict) and data.strip().count(b"\n"):  # pretty-printed: not JSON lines
            keys = ", ".join(sorted(map(str, whole)))
            raise LoaderError(
                f"{path}:1: expected a JSON array of row objects, JSON lines or an object with an "
                f"'instances' list, got one JSON object with fields [{keys}]"
            )
        yield from _iter_jsonl_rows(path)
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise LoaderError(f"{path}:{line}: bytes are not valid UTF-8") from None
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LoaderError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    yield from _numbered_rows(path, rows)


def _one_object(data: bytes) -> Any:
    """The file parsed as one JSON value, or None when it is not one (JSON lines, broken bytes:
    the line-by-line reader then names the line)."""
    if not data.lstrip().startswith(b"{"):
        return None
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


def _numbered_rows(path: Path, rows: list[Any]) -> Rows:
    for n, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise LoaderError(f"{path} row {n}: expected a JSON object, got {type(row).__name__}")
        yield f"{path} row {n}", row


def _iter_parquet_rows(path: Path) -> Rows:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise LoaderError(f"{path}: not a readable Parquet file ({first_line(exc)})") from None
    n = 0
    try:
        for batch in pf.iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                n += 1
                yield f"{path} row {n}", row
    except (OSError, pa.ArrowException) as exc:
        raise LoaderError(f"{path} row {n + 1}: unreadable Parquet data ({first_line(exc)})") from None


def _iter_directory(path: Path, split: str) -> Iterator[tuple[str, Rows]]:
    if _is_saved_dataset(path):
        yield str(path), _iter_dataset_rows(_load_from_disk(path, split), f"{path}[{split}]")
        return
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in FILE_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if not files:
        raise LoaderError(f"{path}: no {', '.join(FILE_SUFFIXES)} files in this directory")

    def names(p: Path) -> set[str]:  # hub layouts: train.jsonl, train-00000-of-00002.parquet, train/x
        rel = p.relative_to(path)
        stem = rel.name.split(".")[0]
        return {*rel.parts[:-1], stem, stem.split("-")[0]}

    def family(p: Path) -> tuple[str, ...]:  # shards of one split share it
        rel = p.relative_to(path)
        return (*rel.parts[:-1], rel.name.split(".")[0].split("-")[0])

    matching = [p for p in files if split in names(p)]
    if matching:
        files = matching
    elif len({family(p) for p in files}) > 1:
        found = ", ".join(str(p.relative_to(path)) for p in files[:8])
        more = f", ... ({len(files)} files)" if len(files) > 8 else ""
        raise LoaderError(f"{path}: no file for split {split!r} (found: {found}{more})")
    for p in files:
        yield str(p), _iter_file(p)


def _is_saved_dataset(path: Path) -> bool:
    """A ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` directory (datasets' own markers)."""
    if not any(path.glob("*.json")):  # both markers are .json files: spare plain folders the import
        return False
    from datasets import config

    markers = (config.DATASETDICT_JSON_FILENAME, config.DATASET_STATE_JSON_FILENAME)
    return any((path / name).exists() for name in markers)


def _load_from_disk(path: Path, split: str) -> Any:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:  # noqa: BLE001 - datasets raises many kinds
        raise LoaderError(f"{path}: cannot load dataset directory ({first_line(exc)})") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise LoaderError(f"{path}: no split {split!r} (found: {', '.join(ds)})")
        ds = ds[split]
    return ds


def _iter_hub(name: str, split: str) -> Rows:
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as exc:  # noqa: BLE001 - network, auth, missing split, ...
        raise LoaderError(
            f"{name}: not a local path, and loading it from the Hugging Face hub (split "
            f"{split!r}) failed: {type(exc).__name__}: {first_line(exc)}"
        ) from None
    yield from _iter_dataset_rows(ds, f"{name}[{split}]")


def _iter_dataset_rows(ds: Any, label: str) -> Rows:
    for n, row in enumerate(ds, start=1):
        yield f"{label} row {n}", dict(row)


__all__ = ["LoaderError", "Rows", "count_rows", "first_line", "iter_sources"]
