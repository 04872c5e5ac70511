"""What every bench result records (machine, versions, date) and the small helpers the scripts share.

    from _meta import write_result, peak_rss_mb
    write_result("sampling", {"args": ..., ...})   # -> bench/results/sampling.json
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import resource
import statistics
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PACKAGES = ("torch", "transformers", "trl", "datasets", "accelerate", "numpy", "stagealign")


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True,
                             timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def meta() -> dict:
    """Date, machine and library versions for a result file."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    threads = None
    if "torch" in sys.modules:
        threads = sys.modules["torch"].get_num_threads()
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0))
                    if hasattr(os, "sched_getaffinity") else os.cpu_count(),
                    "torch_threads": threads, "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
        "versions": versions,
        "commit": _git_commit(),
    }


def write_result(name: str, payload: dict, out: str | Path | None = None) -> Path:
    """Write `payload` with `meta()` in front to bench/results/<name>.json (or `out`)."""
    from stagealign import artifacts

    path = Path(out) if out else RESULTS / f"{name}.json"
    artifacts.write_json(path, {**meta(), **payload})
    return path


def _proc_status_mb(key: str) -> float | None:
    """A memory line of /proc/self/status (e.g. VmHWM, VmRSS) in MiB; None where /proc is missing."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MiB.

    Linux: VmHWM of /proc/self/status (ru_maxrss would carry over the parent's high-water mark
    through fork + exec). Elsewhere ru_maxrss (KiB on Linux, bytes on macOS).
    """
    peak = _proc_status_mb("VmHWM")
    if peak is not None:
        return peak
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024


def rss_mb() -> float:
    """Current resident set size, MiB (VmRSS; the peak where /proc is missing)."""
    now = _proc_status_mb("VmRSS")
    return now if now is not None else peak_rss_mb()


def median(values) -> float:
    return float(statistics.median(values))


def loglog_slope(xs, ys) -> float:
    """Least-squares slope of log(y) on log(x): the exponent b of y ~ x^b."""
    import numpy as np

    lx, ly = np.log(np.asarray(xs, dtype=float)), np.log(np.asarray(ys, dtype=float))
    return float(np.polyfit(lx, ly, 1)[0])
