"""What a grid is: its `grid:` config section, and the cells it expands to.

A *grid* crosses initial policies x training methods x seeds with data schedules: every
explicit static/on-policy path of length k (``paths: all`` = all 2^k of them) plus the entries of
``schedules`` (`SCHEDULES`): a schedule kind other than ``path`` (`schedule.KINDS`: ``auto`` with
the config's rule, ``blend``, ``union``, ...) or one of auto's rules (`schedule.RULES`, e.g.
``bs-hard``), a cell of kind ``auto`` following that rule and named after it. Every cell is an
ordinary, resumable run directory

    OUT/<policy>/<method>/seed<s>/<path-off-on | auto | blend | union | bs-hard | ...>

so a grid can stop anywhere and continue, and any cell can be inspected with the run tools.
"""

from __future__ import annotations

import difflib
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from stagealign.config import (ConfigError, RunConfig, apply_overrides, format_validation_error, parse_override,
                               read_yaml_mapping)
from stagealign.rundir import RunDir
from stagealign.schedule import KINDS, PURE, RULES, is_adaptive, parse_path, path_text, races

MANIFEST = "grid-cells.json"
METRICS = "grid.json"
MAX_ALL_PATHS_ITERATIONS = 6
#: what `grid.schedules` accepts: every schedule kind but `path` (paths are `grid.paths`), then
#: auto's rules, each a cell of kind auto following that rule
SCHEDULE_KINDS: tuple[str, ...] = tuple(k for k in KINDS if k != "path")
SCHEDULES: tuple[str, ...] = SCHEDULE_KINDS + RULES
if len(set(SCHEDULES)) != len(SCHEDULES):  # a rule named like a kind would make a cell ambiguous
    raise RuntimeError(f"schedule kinds and rules share a name: {SCHEDULES}")


def _schedule_name(v: str) -> str:
    """A `grid.schedules` entry, checked; a typo names the closest valid name."""
    if v in SCHEDULES:
        return v
    close = difflib.get_close_matches(str(v), SCHEDULES, n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"known: {', '.join(SCHEDULES)}"
    if v == "path":
        hint = "explicit paths go in grid.paths, e.g. ['off,on']"
    raise PydanticCustomError("grid_schedule", "unknown schedule '{name}'; {hint}", {"name": v, "hint": hint})


class GridError(ConfigError):
    """A problem with the grid spec or with a grid directory."""


class CellResources(BaseModel):
    """What one cell asks of a Ray cluster (`stagealign grid --executor ray`); the local executor
    runs one cell at a time and ignores it. Ray starts a cell only where these are free, so
    num_cpus also sets how many cells share a machine (and the cell's torch threads)."""

    model_config = ConfigDict(extra="forbid")

    num_cpus: float = Field(1, gt=0, description="CPUs per cell (also its torch threads)")
    num_gpus: float = Field(0, ge=0, description="GPUs per cell; fractions share a GPU")


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
    schedules: list[Annotated[str, AfterValidator(_schedule_name)]] = Field(
        default_factory=lambda: ["auto"],
        description=f"schedules run next to the paths: a schedule kind ({', '.join(SCHEDULE_KINDS)}) "
                    f"or a rule of auto ({', '.join(RULES)})")
    resources: CellResources = Field(default_factory=CellResources,
                                     description="per cell on a Ray cluster, e.g. {num_cpus: 1, num_gpus: 0}")

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
    """A path cell's directory name: ``path-off-on``."""
    return "path-" + path_text(sources)


def _label(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", model.strip("/").replace("/", "__")) or "model"


@dataclass
class Cell:
    policy: str  # label (testbed name or sanitised model name)
    method: str
    seed: int
    name: str  # path-off-on | a schedule kind (auto, blend, union, ...) | a rule of auto (bs-hard, ...)
    kind: str  # path | auto | blend | static | onpolicy | union | route (a rule's cell is auto)
    path: list[str] | None
    cfg: RunConfig
    sig: list[tuple[str, str]] = field(default_factory=list)  # realised (method, source) per iteration

    @property
    def dir(self) -> Path:
        return Path(self.cfg.run_dir)

    @property
    def run(self) -> RunDir:
        return RunDir(self.cfg.run_dir)

    @property
    def group(self) -> tuple[str, int]:
        return (self.policy, self.seed)

    @property
    def id(self) -> str:
        return f"{self.policy}/{self.method}/seed{self.seed}/{self.name}"

    def to_dict(self, out: Path) -> dict:
        return {"policy": self.policy, "method": self.method, "seed": self.seed, "name": self.name,
                "kind": self.kind, "rule": self.rule, "path": self.path, "dir": str(self.dir.relative_to(out))}

    @property
    def rule(self) -> str | None:
        """The rule an auto cell decides by (None for the other kinds)."""
        return self.cfg.schedule.rule if self.kind == "auto" else None


def _paths(spec: GridSpec, k: int) -> list[list[str]]:
    if spec.paths == "none":
        return []
    if spec.paths == "all":
        if k > MAX_ALL_PATHS_ITERATIONS:
            raise GridError(f"grid.paths=all with iterations={k} would be {2 ** k} paths per cell; "
                            f"list the paths you want (at most {MAX_ALL_PATHS_ITERATIONS} iterations for 'all')")
        return [list(p) for p in itertools.product(PURE, repeat=k)]
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
                    if kind in RULES:  # auto following this rule
                        kind, d["schedule"]["rule"] = "auto", kind
                    d["schedule"]["kind"] = kind
                    d["schedule"]["path"] = path_text(p, sep=",") if p else None
                    d["run_dir"] = str(out / label / method / f"seed{seed}" / name)
                    probed = is_adaptive(kind) and not races(kind, d["schedule"]["rule"])
                    if probed and not d["boundary"]["enabled"]:
                        raise GridError(f"grid: schedule '{name}' needs boundary.enabled=true")
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


def demo_config_path() -> Path:
    """The demo grid config shipped with the package (`stagealign demo`, `make demo`)."""
    return Path(__file__).resolve().parent.parent / "configs" / "demo-grid.yaml"
