"""The research experiment as one command: the path grid and its metrics.

A *grid* crosses initial policies x training methods x seeds with data schedules: every
explicit static/on-policy path of length k (``paths: all`` = all 2^k of them) plus adaptive
schedules (``auto``, ``blend``). Every cell is an ordinary, resumable run directory

    OUT/<policy>/<method>/seed<s>/<path-off-on | auto | blend | ...>

so a grid can stop anywhere and continue, and any cell can be inspected with the run tools.

Shared prefixes are trained once. Stage seeds depend only on (seed, iteration, stage), so two
cells of the same (policy, seed) that agree on their first j data sources (and method) have
identical artifacts for iterations 0..j: the later cell adopts them (`Run.adopt_prefix`).
Going further, the boundary score measured before iteration j+1 depends only on the checkpoint
after iteration j, so it is adopted too. Adaptive schedules are resolved the same way: the
schedule's decision is predicted from the adopted measurement with the pipeline's own
`schedule.choose`, and when it names a pure source whose continuation has already been trained,
that continuation is adopted. The adopted `decide` stages are then recomputed by the run itself
and checked against the prediction. With k=2, the four paths cost 6 training iterations,
3 boundary measurements and 7 evaluations per (policy, method, seed); `auto` usually costs
nothing extra.

`grid_metrics` turns the cells into the paper's numbers (gain per iteration and path, the
on/off effectiveness ratio, best path, auto's regret, boundary-score trajectories, the boundary
score's calibration, and diversity/quality diagnostics of the candidates), with 95% intervals
over seeds; `stagealign.report` renders them.
"""

from __future__ import annotations

import contextlib
import difflib
import itertools
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from stagealign import artifacts
from stagealign.config import (ConfigError, RunConfig, apply_overrides, format_validation_error, parse_override,
                               read_yaml_mapping)
from stagealign.schedule import Choice, choose, parse_path
from stagealign.ui import NullUI

__all__ = ["GridSpec", "GridError", "Cell", "load_grid_config", "parse_grid", "grid_cells", "plan_reuse", "run_grid",
           "grid_metrics", "path_name", "demo_config_path", "MANIFEST", "METRICS"]

MANIFEST = "grid-cells.json"
METRICS = "grid.json"
_SHORT = {"static": "off", "onpolicy": "on"}
MAX_ALL_PATHS_ITERATIONS = 6


class GridError(ConfigError):
    """A problem with the grid spec or with a grid directory."""


class GridSpec(BaseModel):
    """The `grid:` section of a config file. Unset entries fall back to the base run config."""

    model_config = ConfigDict(extra="forbid")

    policies: list[str] | None = Field(None, description="testbed initial policies, e.g. [weak, boundary, strong]")
    models: list[str] | None = Field(None, description="HF initial policies (paths or hub names)")
    methods: list[Literal["dpo", "slic-hf", "ipo"]] | None = Field(None, description="default: training.method")
    seeds: list[int] | None = Field(None, description="run seeds (default: the config's seed)")
    iterations: int | None = Field(None, ge=1, le=64, description="default: the config's iterations")
    paths: Literal["all", "none"] | list[str | list[str]] = Field(
        "all", description="'all' (every static/on-policy path), 'none', or a list such as ['off,on', 'on,on']")
    schedules: list[Literal["auto", "blend", "static", "onpolicy"]] = Field(
        default_factory=lambda: ["auto"], description="adaptive or fixed schedules run next to the paths")

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v):
        if v is not None:
            if not v:
                raise ValueError("give at least one seed")
            if any(s < 0 for s in v) or len(set(v)) != len(v):
                raise ValueError("seeds must be distinct and >= 0")
        return v

    @field_validator("policies", "models", "methods")
    @classmethod
    def _nonempty(cls, v):
        if v is not None:
            if not v:
                raise ValueError("must not be empty")
            if len(set(v)) != len(v):
                raise ValueError("entries must be distinct")
        return v


# --------------------------------------------------------------------------------- loading
def _grid_error(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        where = "grid." + ".".join(str(p) for p in loc) if loc else "grid"
        if err["type"] == "extra_forbidden":
            known = list(GridSpec.model_fields)
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            hint = f"; did you mean 'grid.{close[0]}'?" if close else f"; known grid keys: {', '.join(known)}"
            lines.append(f"{source}: unknown key '{where}'{hint}")
        else:
            lines.append(f"{source}: {where}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


def parse_grid(data: Any, source: str = "grid") -> GridSpec:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise GridError(f"{source}: 'grid' must be a mapping, got {type(data).__name__}")
    try:
        return GridSpec.model_validate(data)
    except ValidationError as exc:
        raise GridError(_grid_error(exc, source)) from None


def load_grid_config(path: str | Path | None, overrides: list[str] | None = None) -> tuple[RunConfig, GridSpec]:
    """Read a config file with a top-level `grid:` section.

    The `grid` section is popped and validated as a `GridSpec`; the rest is the base
    `RunConfig`. Overrides starting with `grid.` (e.g. `grid.seeds=[0,1,2]`) go to the grid,
    all others to the run config.
    """
    data, source = read_yaml_mapping(path)
    grid = data.pop("grid", None)
    if grid is None:
        grid = {}
    if not isinstance(grid, dict):
        raise GridError(f"{source}: 'grid' must be a mapping, got {type(grid).__name__}")
    run_over, grid_over = [], []
    for item in overrides or []:
        (grid_over if item.strip().startswith("grid.") else run_over).append(item)
    for item in grid_over:
        keys, value = parse_override(item)
        if len(keys) != 2:
            raise GridError(f"override {item!r}: grid overrides look like grid.<key>=value")
        grid[keys[1]] = value
    data = apply_overrides(data, run_over)
    try:
        base = RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None
    return base, parse_grid(grid, source)


# --------------------------------------------------------------------------------- cells
def path_name(sources: list[str]) -> str:
    return "path-" + "-".join(_SHORT.get(s, s) for s in sources)


def _label(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", model.strip("/").replace("/", "__")) or "model"


@dataclass
class Cell:
    policy: str  # label (testbed name or sanitised model name)
    method: str
    seed: int
    name: str  # path-off-on | auto | blend | static | onpolicy
    kind: str  # path | auto | blend | static | onpolicy
    path: list[str] | None
    cfg: RunConfig
    sig: list[tuple[str, str]] = field(default_factory=list)  # realised (method, source) per iteration

    @property
    def dir(self) -> Path:
        return Path(self.cfg.run_dir)

    @property
    def group(self) -> tuple[str, int]:
        return (self.policy, self.seed)

    @property
    def id(self) -> str:
        return f"{self.policy}/{self.method}/seed{self.seed}/{self.name}"

    def to_dict(self, out: Path) -> dict:
        return {"policy": self.policy, "method": self.method, "seed": self.seed, "name": self.name,
                "kind": self.kind, "path": self.path, "dir": str(self.dir.relative_to(out))}


def _paths(spec: GridSpec, k: int) -> list[list[str]]:
    if spec.paths == "none":
        return []
    if spec.paths == "all":
        if k > MAX_ALL_PATHS_ITERATIONS:
            raise GridError(f"grid.paths=all with iterations={k} would be {2 ** k} paths per cell; "
                            f"list the paths you want (at most {MAX_ALL_PATHS_ITERATIONS} iterations for 'all')")
        return [list(p) for p in itertools.product(("static", "onpolicy"), repeat=k)]
    out = []
    for p in spec.paths:
        try:
            steps = parse_path(p)
        except ValueError as exc:
            raise GridError(f"grid.paths: {exc}") from None
        if len(steps) != k:
            raise GridError(f"grid.paths: {p!r} has {len(steps)} steps but the grid runs {k} iterations")
        if steps not in out:
            out.append(steps)
    return out


def grid_cells(base: RunConfig, spec: GridSpec, out_dir: str | Path) -> list[Cell]:
    """Every cell of the grid, in execution order (paths in prefix order, then schedules)."""
    out = Path(out_dir)
    k = spec.iterations or base.iterations
    if spec.policies and spec.models:
        raise GridError("grid: give either policies (testbed) or models (HF), not both")
    if spec.policies:
        inits = [(p, {"testbed": p, "model": None}) for p in spec.policies]
    elif spec.models:
        inits = [(_label(m), {"model": m, "testbed": None}) for m in spec.models]
    else:
        pc = base.policy
        inits = [(pc.testbed or _label(pc.model or "model"), {})]
    labels = [lab for lab, _ in inits]
    if len(set(labels)) != len(labels):
        raise GridError(f"grid: initial policies map to the same directory names: {labels}")
    methods = spec.methods or [base.training.method]
    seeds = spec.seeds if spec.seeds is not None else [base.seed]
    paths = _paths(spec, k)
    schedules = list(dict.fromkeys(spec.schedules))
    if not paths and not schedules:
        raise GridError("grid: no cells (paths: none and no schedules)")
    base_data = base.model_dump(mode="json")
    cells = []
    for label, pol in inits:
        for seed in seeds:
            for method in methods:
                plans = [(path_name(p), "path", p) for p in paths] + [(s, s, None) for s in schedules]
                for name, kind, p in plans:
                    d = _deep_copy(base_data)
                    d["policy"].update(pol)
                    d["training"]["method"] = method
                    d["seed"] = seed
                    d["iterations"] = k
                    d["schedule"]["kind"] = kind
                    d["schedule"]["path"] = ",".join(_SHORT[s] for s in p) if p else None
                    d["run_dir"] = str(out / label / method / f"seed{seed}" / name)
                    if kind in ("auto", "blend") and not d["boundary"]["enabled"]:
                        raise GridError(f"grid: schedule '{kind}' needs boundary.enabled=true")
                    try:
                        cfg = RunConfig.model_validate(d)
                    except ValidationError as exc:
                        raise ConfigError(format_validation_error(exc, f"grid cell {label}/{method}/{name}")) from None
                    cells.append(Cell(label, method, seed, name, kind, p, cfg))
    return cells


def _deep_copy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deep_copy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deep_copy(v) for v in d]
    return d


# --------------------------------------------------------------------------------- prefix reuse
def _done(cell: Cell) -> list[str]:
    p = cell.dir / "state.json"
    return artifacts.read_json(p)["done"] if p.is_file() else []


def _realised(cell: Cell) -> list[tuple[str, str]]:
    """(method, source) per finished iteration; stops at the first blend (not shareable)."""
    sig = []
    for k in range(1, cell.cfg.iterations + 1):
        p = cell.dir / f"iter_{k}" / "decide.json"
        if not p.is_file():
            break
        src = artifacts.read_json(p)["source"]
        if src not in ("static", "onpolicy"):
            break
        sig.append((cell.method, src))
    return sig


def _common(a: list, b: list) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _has(cell: Cell, k: int, stage: str) -> bool:
    return f"iter_{k}/{stage}" in _done(cell) and (cell.dir / f"iter_{k}" / f"{stage}.json").is_file()


def _predict(cell: Cell, k: int, measure: dict | None, previous: Choice | None) -> Choice:
    """The pipeline's decision for iteration k (same call as `Run._decide`)."""
    s, b = cell.cfg.schedule, cell.cfg.boundary
    measured = bool(measure and measure.get("measured"))
    return choose(s.kind, k, measure.get("decision") if measured else None, measure.get("bs") if measured else None,
                  previous, path=parse_path(s.path) if s.path else None, threshold=b.threshold, first=s.first,
                  blend_width=s.blend_width)


@dataclass
class _Plan:
    src: Cell | None = None  # adopt iterations 0..upto from here
    upto: int = 0
    sig: list[tuple[str, str]] = field(default_factory=list)
    measure_src: Cell | None = None  # and the boundary measurement before iteration upto+1


def plan_reuse(cell: Cell, finished: list[Cell]) -> _Plan:
    """What `cell` can adopt from finished cells of the same (policy, seed)."""
    peers = [f for f in finished if f.group == cell.group and f.dir != cell.dir and _has(f, 0, "evaluate")]
    if not peers:
        return _Plan()
    plan = _Plan(src=peers[0], upto=0)
    sig: list[tuple[str, str]] = []
    previous: Choice | None = None
    for k in range(1, cell.cfg.iterations + 1):
        cand = [f for f in peers if _common(f.sig, sig) >= k - 1]
        msrc = next((f for f in cand if _has(f, k, "measure")), None)
        if cell.kind == "path" or cell.kind in ("static", "onpolicy"):
            choice = _predict(cell, k, None, previous)
        elif msrc is None:
            break
        else:
            choice = _predict(cell, k, artifacts.read_json(msrc.dir / f"iter_{k}" / "measure.json"), previous)
        plan.measure_src = msrc
        if choice.source not in ("static", "onpolicy"):
            break
        step = (cell.method, choice.source)
        nxt = next((f for f in cand if _common(f.sig, sig + [step]) >= k and _has(f, k, "evaluate")), None)
        if nxt is None:
            break
        sig.append(step)
        previous = choice
        plan.src, plan.upto, plan.sig, plan.measure_src = nxt, k, list(sig), None
    return plan


def _adopt(cell: Cell, plan: _Plan, run) -> str:
    if plan.src is None or (cell.dir / "state.json").is_file():
        return ""
    run.adopt_prefix(plan.src.dir, plan.upto)
    done = run.done()
    # the run recomputes its own decisions (cheap, and its reason text is its own); checked after
    done = [s for s in done if not s.endswith("/decide")]
    note = f"adopted iterations 0..{plan.upto} from {plan.src.id}"
    k = plan.upto + 1
    if plan.measure_src is not None and k <= cell.cfg.iterations and _has(plan.measure_src, k, "measure"):
        dst = cell.dir / f"iter_{k}" / "measure.json"
        artifacts.write_json(dst, artifacts.read_json(plan.measure_src.dir / f"iter_{k}" / "measure.json"))
        done.append(f"iter_{k}/measure")
        note += f" + boundary score of iteration {k} from {plan.measure_src.id}"
    artifacts.write_json(run.state_path, {"done": done})
    return note


def _check_adopted(cell: Cell, plan: _Plan) -> None:
    real = _realised(cell)
    if real[: len(plan.sig)] != plan.sig:
        raise GridError(f"{cell.dir}: this cell adopted iterations 1..{plan.upto} for data sources "
                        f"{[s for _, s in plan.sig]} but its schedule decided {[s for _, s in real]}; "
                        f"delete {cell.dir} and re-run the grid")


# --------------------------------------------------------------------------------- progress
class _CellUI(NullUI):
    """Prefixes a cell's log lines with its id; stage bars go to the grid display."""

    def __init__(self, parent, prefix: str):
        self.parent, self.prefix = parent, prefix

    def log(self, msg: str) -> None:
        self.parent.log(f"{self.prefix} {msg}")

    def task(self, desc: str, total: int | None):
        return self.parent.task(desc, total)


class _RichGridUI(NullUI):
    """One rich display for the whole grid: a cells-done bar on top, the current stage below."""

    def __init__(self, console, total: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=console)
        self.overall = self.progress.add_task("grid", total=total)

    def log(self, msg: str) -> None:
        self.progress.console.print(msg, highlight=False, markup=False, soft_wrap=True)

    @contextlib.contextmanager
    def task(self, desc: str, total: int | None) -> Iterator:
        tid = self.progress.add_task(f"  {desc}", total=total)

        def advance(n: int = 1, total: int | None = None) -> None:
            if total is not None:
                self.progress.update(tid, total=total)
            self.progress.advance(tid, n)

        try:
            yield advance
        finally:
            self.progress.remove_task(tid)

    def cell(self, i: int, total: int, cid: str) -> None:
        self.progress.update(self.overall, completed=i, description=f"grid: cells done (next: {cid})")


class _PlainGridUI(NullUI):
    def __init__(self, ui):
        self.ui = ui

    def log(self, msg: str) -> None:
        self.ui.log(msg)

    def task(self, desc: str, total: int | None):
        return self.ui.task(desc, total)

    def cell(self, i: int, total: int, cid: str) -> None:
        pass


# --------------------------------------------------------------------------------- running
def run_grid(base: RunConfig, spec: GridSpec, out_dir: str | Path | None = None, ui=None) -> dict[str, Any]:
    """Run (or resume) every cell of the grid; write OUT/grid-cells.json and OUT/grid.json.

    Returns the metrics (`grid_metrics`). Finished cells and stages are skipped, shared prefixes
    are adopted rather than retrained (see the module docstring).
    """
    from stagealign.pipeline import Run

    out = Path(out_dir if out_dir is not None else base.run_dir)
    cells = grid_cells(base, spec, out)
    manifest = {"base_config": base.model_dump(mode="json"), "grid": spec.model_dump(mode="json"),
                "cells": [c.to_dict(out) for c in cells]}
    _merge_manifest(out, manifest)
    ui = ui or NullUI()
    gui = _RichGridUI(ui.console, len(cells)) if hasattr(ui, "console") else _PlainGridUI(ui)
    finished: list[Cell] = []
    ctx = gui.progress if isinstance(gui, _RichGridUI) else contextlib.nullcontext()
    with ctx:
        for i, cell in enumerate(cells):
            gui.cell(i, len(cells), cell.id)
            already = (cell.dir / "summary.json").is_file() and (cell.dir / "state.json").is_file()
            run = Run(cell.cfg, ui=_CellUI(gui, cell.id))
            plan = plan_reuse(cell, finished)
            lock = getattr(artifacts, "RunLock", None)  # adopt under the run's own directory lock
            with lock(cell.dir) if lock is not None else contextlib.nullcontext():
                note = _adopt(cell, plan, run)
            if note:
                gui.log(f"[grid] {cell.id}: {note}")
            run.execute()
            _check_adopted(cell, plan)
            cell.sig = _realised(cell)
            finished.append(cell)
            gui.log(f"[grid] {i + 1}/{len(cells)} {cell.id}: {'already done' if already else 'done'}")
        gui.cell(len(cells), len(cells), "-")
    return grid_metrics(out)


def _merge_manifest(out: Path, manifest: dict) -> None:
    """Keep cells of earlier invocations (e.g. fewer seeds) listed, so metrics cover them too."""
    path = out / MANIFEST
    if path.is_file():
        old = artifacts.read_json(path)
        if old.get("base_config") == manifest["base_config"]:
            seen = {c["dir"] for c in manifest["cells"]}
            manifest["cells"] += [c for c in old.get("cells", []) if c["dir"] not in seen]
    artifacts.write_json(path, manifest)


# --------------------------------------------------------------------------------- metrics
def _est(values: list[float], level: float = 0.95) -> dict | None:
    from stagealign.stats import mean_ci

    if not values:
        return None
    d = mean_ci(values, level).to_dict(json_safe=True)
    return {"mean": d["mean"], "lo": d["lo"], "hi": d["hi"], "n": d["n_clusters"], "values": list(values)}


def _estimate(e, values=None) -> dict:
    d = e.to_dict(json_safe=True)
    out = {"mean": d["mean"], "lo": d["lo"], "hi": d["hi"], "n": d["n_clusters"]}
    if values is not None:
        out["values"] = values
    return out


def _load_cells(out: Path) -> list[dict]:
    path = out / MANIFEST
    if not path.is_file():
        raise GridError(f"{out}: not a grid directory (no {MANIFEST}); run `stagealign grid` first")
    cells = []
    for c in artifacts.read_json(path)["cells"]:
        d = out / c["dir"]
        if not (d / "summary.json").is_file():
            continue
        c = dict(c)
        c["abs"] = d
        c["summary"] = artifacts.read_json(d / "summary.json")
        rows = c["summary"]["iterations"]
        c["sources"] = [r["source"] for r in rows]
        c["shares"] = [r["onpolicy_share"] for r in rows]
        c["pure"] = []
        for r in rows:
            if r["source"] not in ("static", "onpolicy"):
                break
            c["pure"].append(r["source"])
        cells.append(c)
    return cells


def _trajectory(c: dict) -> tuple[list[float], list[float], list[float | None], list[dict]]:
    s = c["summary"]
    rows = s["iterations"]
    metric = rows[0]["metric"] if rows else ("reward" if "reward" in s["initial"] else "judge_score")
    reward = [s["initial"][metric]["mean"]] + [r["after"] for r in rows]
    gain = [r["after"] - r["before"] for r in rows]
    bs = [r["bs"] for r in rows]
    return reward, gain, bs, rows


def _short(sources: list[str]) -> str:
    return "-".join(_SHORT.get(s, s) for s in sources) if sources else "init"


def grid_metrics(out_dir: str | Path, write: bool = True, level: float = 0.95) -> dict[str, Any]:
    """Metrics of a grid directory, per (policy, method), written to OUT/grid.json.

    Rewards are the ground truth when the world knows it, else the judge's score (`metric`).
    Intervals are 95% over seeds (t for means and differences, paired bootstrap for the ratio);
    with one seed they are unbounded and stored as null.
    """
    from stagealign.stats import diff_ci, ratio_ci

    out = Path(out_dir)
    cells = _load_cells(out)
    if not cells:
        raise GridError(f"{out}: no finished grid cells yet")
    first = cells[0]["summary"]
    metric = first["iterations"][0]["metric"] if first["iterations"] else "reward"
    threshold = artifacts.read_json(out / MANIFEST)["base_config"]["boundary"]["threshold"]
    groups = []
    keys = list(dict.fromkeys((c["policy"], c["method"]) for c in cells))
    for policy, method in keys:
        gc = [c for c in cells if (c["policy"], c["method"]) == (policy, method)]
        seeds = sorted({c["seed"] for c in gc})
        names = list(dict.fromkeys(c["name"] for c in gc))
        per_cell: dict[str, Any] = {}
        traj: dict[str, dict[int, tuple]] = {}
        for name in names:
            cs = {c["seed"]: c for c in gc if c["name"] == name}
            t = {s: _trajectory(c) for s, c in cs.items()}
            traj[name] = t
            k = len(next(iter(t.values()))[1])
            ss = sorted(t)
            per_cell[name] = {
                "kind": next(iter(cs.values()))["kind"],
                "path": next(iter(cs.values()))["path"],
                "seeds": ss,
                "realised": [_short(cs[s]["sources"]) if len(cs[s]["pure"]) == len(cs[s]["sources"]) else
                             "-".join(_SHORT.get(x, f"blend({sh:.2f})" if x == "blend" else x)
                                      for x, sh in zip(cs[s]["sources"], cs[s]["shares"])) for s in ss],
                "onpolicy_share": [[float(x) for x in cs[s]["shares"]] for s in ss],
                "reward": [_est([t[s][0][i] for s in ss], level) for i in range(k + 1)],
                "gain": [_est([t[s][1][i] for s in ss], level) for i in range(k)],
                "bs": [_est([t[s][2][i] for s in ss if t[s][2][i] is not None], level) for i in range(k)],
                "final": _est([t[s][0][k] for s in ss], level),
            }
        # one-iteration effectiveness: first-iteration gain of each source, paired by seed
        first_gain: dict[str, dict[int, float]] = {"static": {}, "onpolicy": {}}
        bs0: dict[int, float] = {}
        for c in gc:
            if c["pure"]:
                first_gain[c["pure"][0]].setdefault(c["seed"], c["summary"]["iterations"][0]["after"]
                                                    - c["summary"]["iterations"][0]["before"])
            b = c["summary"]["iterations"][0]["bs"] if c["summary"]["iterations"] else None
            if b is not None:
                bs0.setdefault(c["seed"], b)
        paired = sorted(set(first_gain["static"]) & set(first_gain["onpolicy"]))
        eff: dict[str, Any] = {
            "static_gain": _est([first_gain["static"][s] for s in sorted(first_gain["static"])], level),
            "onpolicy_gain": _est([first_gain["onpolicy"][s] for s in sorted(first_gain["onpolicy"])], level),
            "bs0": _est([bs0[s] for s in sorted(bs0)], level),
            "ratio": None, "diff": None, "paired_seeds": paired,
        }
        if paired:
            on = [first_gain["onpolicy"][s] for s in paired]
            off = [first_gain["static"][s] for s in paired]
            eff["ratio"] = _estimate(ratio_ci(on, off, level=level, rng=0))
            eff["diff"] = _estimate(diff_ci(on, off, level=level), [a - b for a, b in zip(on, off)])
        # best explicit path (by mean final reward), auto's choice and regret, blend
        path_names = [n for n in names if per_cell[n]["kind"] == "path"]
        best = max(path_names, key=lambda n: per_cell[n]["final"]["mean"]) if path_names else None
        best_d = {"name": best, "final": per_cell[best]["final"]} if best else None
        adaptive = {}
        for kind in ("auto", "blend", "static", "onpolicy"):
            if kind not in per_cell or kind in path_names:
                continue
            pc = per_cell[kind]
            d: dict[str, Any] = {"realised": pc["realised"], "final": pc["final"],
                                 "onpolicy_share": [sum(x[i] for x in pc["onpolicy_share"]) / len(pc["onpolicy_share"])
                                                    for i in range(len(pc["onpolicy_share"][0]))]}
            if best:
                bt, at = traj[best], traj[kind]
                common = [s for s in sorted(at) if s in bt]
                d["chose_best"] = [path_name_from_short(pc["realised"][pc["seeds"].index(s)]) == best for s in common]
                d["chose_best_share"] = sum(d["chose_best"]) / len(common) if common else None
                d["regret"] = _est([bt[s][0][-1] - at[s][0][-1] for s in common], level)
            adaptive[kind] = d
        groups.append({
            "policy": policy, "method": method, "seeds": seeds, "order": names, "cells": per_cell,
            "effectiveness": eff,
            "best_path": best_d, "adaptive": adaptive,
            "calibration": _calibration(gc, threshold),
            "diagnostics": _diagnostics(gc),
        })
    points = [p for g in groups for p in g["calibration"]]
    result = {
        "grid_dir": str(out), "metric": metric, "threshold": threshold, "level": level,
        "groups": groups,
        "calibration_summary": calibration_summary(points, threshold),
    }
    if write:
        artifacts.write_json(out / METRICS, result)
    return result


def path_name_from_short(short: str) -> str:
    return "path-" + short


def _calibration(gc: list[dict], threshold: float) -> list[dict]:
    """BS at a checkpoint vs (on-policy gain - static gain) of the next iteration, where both exist."""
    by: dict[tuple, dict] = {}
    for c in gc:
        rows = c["summary"]["iterations"]
        for j, src in enumerate(c["pure"]):
            key = (c["seed"], tuple(c["pure"][:j]))
            r = rows[j]
            entry = by.setdefault(key, {})
            entry.setdefault(src, r)
    points = []
    for (seed, prefix), e in sorted(by.items(), key=lambda kv: (kv[0][0], len(kv[0][1]),
                                                               [x != "static" for x in kv[0][1]])):
        if "static" not in e or "onpolicy" not in e or e["onpolicy"]["bs"] is None:
            continue
        on, off = e["onpolicy"], e["static"]
        g_on, g_off = on["after"] - on["before"], off["after"] - off["before"]
        diff = g_on - g_off
        # both continuations start from the same checkpoint, so diff = after_on - after_off; its
        # standard error from the two evaluations' prompt-clustered intervals (95%, normal)
        se = math.hypot(*((r["after_hi"] - r["after_lo"]) / (2 * 1.959964) if r.get("after_hi") is not None
                          and r.get("after_lo") is not None else math.inf for r in (on, off)))
        points.append({"seed": seed, "checkpoint": _short(list(prefix)), "iteration": len(prefix) + 1,
                       "bs": on["bs"], "bs_lo": on["bs_lo"], "bs_hi": on["bs_hi"], "decision": on["decision"],
                       "static_gain": g_off, "onpolicy_gain": g_on, "diff": diff,
                       "significant": bool(abs(diff) > 1.959964 * se),
                       "agree": bool((on["bs"] >= threshold) == (diff > 0))})
    return points


def calibration_summary(points: list[dict], threshold: float) -> dict[str, Any]:
    """How often the BS decision picks the source that gained more next, and which threshold would.

    Agreement is a share of checkpoints with a Wilson 95% interval (checkpoints of one seed are
    not independent across iterations, so read it as descriptive); checkpoints whose gap is
    significant are counted apart. The best threshold maximises agreement of "on-policy iff
    BS >= t" over midpoints between observed scores (ties: the one closest to `threshold`);
    t = 0 means "always on-policy", t = 1 "always static".
    """
    from stagealign.stats import proportion_ci

    if not points:
        return {"points": 0, "agree": None}
    agree = [float(p["agree"]) for p in points]
    sig = [p for p in points if p.get("significant")]
    bs = sorted({p["bs"] for p in points})
    candidates = [0.0, 1.0] + [(a + b) / 2 for a, b in zip(bs, bs[1:])] + [threshold]

    def acc(t: float, pts: list[dict]) -> float:
        return sum((p["bs"] >= t) == (p["diff"] > 0) for p in pts) / len(pts)

    best = max(candidates, key=lambda t: (acc(t, points), -abs(t - threshold)))
    return {
        "points": len(points), "agree": sum(agree) / len(agree),
        "agree_ci": proportion_ci(agree).to_dict(json_safe=True),
        "significant_points": len(sig),
        "agree_significant": acc(threshold, sig) if sig else None,
        "onpolicy_better_share": sum(p["diff"] > 0 for p in points) / len(points),
        "best_threshold": best, "best_threshold_agree": acc(best, points),
        "best_threshold_agree_significant": acc(best, sig) if sig else None,
    }


def _depth(checkpoint: str) -> int:
    return 0 if checkpoint == "init" else checkpoint.count("-") + 1


def _diagnostics(gc: list[dict]) -> list[dict]:
    """Diversity vs quality of the static pool and of on-policy candidates per checkpoint."""
    from stagealign.data.diagnostics import diagnose_pairs, diagnose_sets

    found: dict[tuple, list[tuple[Path, int]]] = {}
    seen: set[tuple] = set()
    for c in sorted(gc, key=lambda c: c["seed"]):
        for j, src in enumerate(c["pure"]):
            key = ("static", "pool") if src == "static" else ("onpolicy", _short(c["pure"][:j]))
            if (key, c["seed"]) in seen or (key == ("static", "pool") and key in found):
                continue
            it = c["abs"] / f"iter_{j + 1}"
            if (it / "candidates.jsonl").is_file() and (it / "pairs.jsonl").is_file():
                seen.add((key, c["seed"]))
                found.setdefault(key, []).append((it, c["seed"]))
    rows = []
    for (origin, checkpoint), dirs in sorted(found.items(), key=lambda kv: (kv[0][0] != "static",
                                                                           _depth(kv[0][1]), kv[0][1])):
        sets = [r for it, _ in dirs for r in artifacts.iter_jsonl(it / "candidates.jsonl") if r["origin"] == origin]
        pairs = [r for it, _ in dirs for r in artifacts.iter_jsonl(it / "pairs.jsonl") if r["origin"] == origin]
        ds = diagnose_sets(sets)
        dp = diagnose_pairs(pairs)

        def m(d, key):
            v = d.get(key)
            return None if v is None else v.get("mean")

        rows.append({
            "origin": origin, "checkpoint": checkpoint,
            "label": "static pool" if origin == "static" else f"on-policy @ {checkpoint}",
            "seeds": sorted({s for _, s in dirs}), "sets": ds["n_sets"], "candidates": ds["n_candidates"],
            "mean_length": ds["mean_length"],
            "distinct_1": m(ds, "distinct_1"), "distinct_2": m(ds, "distinct_2"),
            "ngram_diversity": m(ds, "ngram_diversity"), "edit_diversity": m(ds, "edit_diversity"),
            "quality_mean": m(ds, "quality_mean"), "quality_max": m(ds, "quality_max"),
            "quality_spread": m(ds, "quality_spread"),
            "quality_mean_ci95": (ds.get("quality_mean") or {}).get("ci95"),
            "pairs": dp["n_pairs"], "margin": m(dp, "margin"), "pair_edit_distance": m(dp, "edit_distance"),
            "length_diff": m(dp, "length_diff"),
        })
    return rows


def demo_config_path() -> Path:
    """The demo grid config shipped with the package (`stagealign demo`, `make demo`)."""
    return Path(__file__).parent / "configs" / "demo-grid.yaml"
