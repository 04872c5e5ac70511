"""Atomic artifact I/O: every file a stage writes appears whole or not at all.

A run can be killed at any instant (SIGKILL, OOM, pre-emption). Writing to a temporary file in
the same directory, fsyncing it and renaming it over the target makes the write atomic on POSIX
filesystems, so a resumed run never reads half a file and a failed write (disk full) leaves the
previous version intact and raises `ArtifactError` naming the file.

Temporaries are hidden entries named ``.<name>.<random>.tmp`` beside their target; a directory
being replaced is parked as ``.<name>.old`` for the instant between two renames. A killed process
can leave either behind: `recover` (run by the pipeline under `RunLock` before anything else)
deletes the temporaries and puts a parked directory back when its target is missing.

Fault injection (tests only): the environment variable ``STAGEALIGN_FAULT`` holds a
comma-separated list of named points; when the process reaches one, `fault` kills it with SIGKILL
(no cleanup, no ``finally``), exactly like the OOM killer would. Points:

- ``write:<path suffix>``: inside `atomic_path`, the temporary complete, not yet renamed onto a
  target whose path ends with the suffix (`rundir.relative` names a run's files);
- ``<stage key>:before`` and ``<stage key>:after-artifact`` (a stage about to run, and a stage's
  JSON written but the stage not yet recorded; `rundir.stage_key` names stages);
- ``train-step:<n>``: after optimizer step n of a training run, inside TRL's loop.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


class ArtifactError(RuntimeError):
    """An artifact on disk is unreadable or cannot be written; the message names the file (and line)."""


class RunLockedError(ArtifactError):
    """Another live process holds the run directory."""


FAULT_ENV = "STAGEALIGN_FAULT"


def fault(point: str) -> None:
    """Test hook: SIGKILL this process when `point` is listed in ``$STAGEALIGN_FAULT``."""
    spec = os.environ.get(FAULT_ENV)
    if spec and point in {p.strip() for p in spec.split(",")}:
        os.kill(os.getpid(), signal.SIGKILL)


def _write_fault(target: Path) -> None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    posix = target.as_posix()
    for p in spec.split(","):
        p = p.strip()
        if p.startswith("write:") and posix.endswith("/" + p[len("write:"):].lstrip("/")):
            os.kill(os.getpid(), signal.SIGKILL)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success rename it onto `target`.

    Works for files and directories (a model save). On any exception the temporary is removed
    and `target` is untouched; an `OSError` (disk full, permissions) becomes an `ArtifactError`
    naming `target` (the original error is its ``__cause__``).
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    except OSError as exc:
        raise ArtifactError(f"{target}: cannot write ({exc.strerror or exc})") from exc
    inner = tmp / target.name
    try:
        yield inner
        _write_fault(target)
        if inner.is_dir():
            if target.exists():
                old = target.with_name(f".{target.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(target, old)
                try:
                    os.replace(inner, target)
                except OSError:
                    os.replace(old, target)
                    raise
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(inner, target)
        else:
            with open(inner, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(inner, target)
        _fsync_dir(target.parent)
    except OSError as exc:
        raise ArtifactError(f"{target}: cannot write ({exc.strerror or exc})") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


_TEMP = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")  # tempfile.mkdtemp(prefix=".<name>.", suffix=".tmp")
_PARKED = re.compile(r"^\.(?P<name>.+)\.old$")


def recover(directories: Iterable[str | os.PathLike]) -> dict[str, int]:
    """Undo what a killed writer left: delete temporaries, restore parked directories.

    Looks only in `directories` (a run directory and its iteration folders, as `rundir.RunDir`
    lists them; not below) and only at entries named the way `atomic_path` names them, so nothing
    else there is touched. Only safe while no other process writes there (hold `RunLock`).
    Returns counts.
    """
    out = {"removed": 0, "restored": 0}
    for here in map(Path, directories):
        if not here.is_dir() or here.is_symlink():
            continue
        for path in sorted(here.iterdir()):
            if not path.is_dir() or path.is_symlink():
                continue
            parked = _PARKED.match(path.name)
            if parked and not (here / parked["name"]).exists():
                os.replace(path, here / parked["name"])  # killed between the two renames of a directory swap
                out["restored"] += 1
            elif parked or _TEMP.match(path.name):
                shutil.rmtree(path, ignore_errors=True)
                out["removed"] += 1
    return out


class RunLock:
    """An exclusive advisory lock on a run directory (``<dir>/.lock``), released on exit or death.

    Two processes on one run directory would interleave stages and overwrite each other's
    artifacts; the second one gets `RunLockedError` instead. On platforms without `fcntl` the
    lock is a no-op.
    """

    def __init__(self, directory: str | os.PathLike):
        self.path = Path(directory) / ".lock"
        self._fh = None

    def __enter__(self) -> "RunLock":
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise RunLockedError(f"{self.path.parent}: another process (pid {holder}) is using this run "
                                 "directory; wait for it to finish or choose another run_dir") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._fh = fh
        return self

    def __exit__(self, *exc) -> None:
        if self._fh is not None:
            self._fh.close()  # closing releases the flock
            self._fh = None


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def finite(obj: Any) -> Any:
    """JSON has no Infinity or NaN: an unbounded interval end (one seed, one prompt) is written
    as null so that strict readers (jq, JavaScript, pandas) accept every artifact."""
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):  # numpy / torch values
        obj = obj.tolist()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> None:
    text = json.dumps(finite(obj), indent=2, sort_keys=True, default=_jsonable, allow_nan=False)
    write_text(path, text + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc})") from None


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> int:
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(finite(row), default=_jsonable, ensure_ascii=False, allow_nan=False) + "\n")
            n += 1
    return n


def iter_jsonl_lines(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """Stream (1-based line number, row) pairs, skipping blank lines.

    The one JSONL reader of the package: a broken line raises `ArtifactError` naming the file and
    line number. The line numbers are yielded too so that callers reporting on single rows (the
    pool loader's skip messages) can point at them without a second reader.
    """
    path = Path(path)
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise ArtifactError(f"{path}:{lineno}: bytes are not valid UTF-8") from None
            except json.JSONDecodeError as exc:
                raise ArtifactError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise ArtifactError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            yield lineno, row


def iter_jsonl(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Stream rows; a broken line raises an error naming the file and line number."""
    for _, row in iter_jsonl_lines(path):
        yield row


def append_jsonl(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> None:
    """Append rows to a log that a killed process can leave torn only at its last line.

    For work done in chunks inside one stage (sampling batches): each call's lines are written,
    flushed and fsynced before the call returns, so a resumed stage finds every finished chunk;
    the line being written when the process died is dropped by `read_log`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(finite(r), default=_jsonable, ensure_ascii=False, allow_nan=False) + "\n" for r in rows)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def read_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of an `append_jsonl` log (none if it does not exist), without a torn last line."""
    path = Path(path)
    if not path.is_file():
        return []
    raw = path.read_bytes()
    complete = raw[: raw.rfind(b"\n") + 1]  # a kill mid-append leaves a last line without its newline
    out = []
    for lineno, line in enumerate(complete.splitlines(), start=1):
        try:
            out.append(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ArtifactError(f"{path}:{lineno}: not valid JSON (a chunk log is only ever appended to)") from None
    return out


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    return list(iter_jsonl(path))


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
