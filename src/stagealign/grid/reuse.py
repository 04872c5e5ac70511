"""Shared prefixes are trained once: what a grid cell can adopt from the cells already finished.

Stage seeds depend only on (seed, iteration, stage), so two cells of the same (policy, seed) that
agree on their first j data sources (and method) have identical artifacts for iterations 0..j:
the later cell adopts them (`RunDir.adopt`). Going further, the boundary score measured before
iteration j+1 depends only on the checkpoint after iteration j, so it is adopted too. Adaptive
schedules are resolved the same way: the schedule's decision is predicted from the adopted
measurement with the pipeline's own rule (`schedule.next_choice`), and when it names a pure
source whose continuation has already been trained, that continuation is adopted. The adopted
`decide` stages are then recomputed by the run itself and checked against the prediction
(`check_adopted`); an auto cell follows its own rule (`schedule.rule`) there, so the probe-based
rules (bs, bs-hard, bs-pool, coverage) adopt like auto. Cells whose next source is no pure one
(blend, union, route) share only what comes before it, and a `race` cell adopts iteration 0 only:
its decision comes from a race it runs itself, which no finished cell's measurement predicts.
With k=2, the four paths cost 6 training iterations, 3 boundary measurements and 7 evaluations
per (policy, method, seed); `auto` usually costs nothing extra.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from stagealign.grid.spec import Cell, GridError
from stagealign.schedule import MIXED, PURE, Choice, next_choice, races


def realised(cell: Cell) -> list[tuple[str, str]]:
    """(method, source) per finished iteration; stops at the first source that is not pure (a blend,
    union or route: not shareable)."""
    sig = []
    for k in range(1, cell.cfg.iterations + 1):
        path = cell.run.stage_path(k, "decide")
        if not path.is_file():
            break
        src = cell.run.read_stage(k, "decide")["source"]
        if src not in PURE:
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


@dataclass
class Plan:
    src: Cell | None = None  # adopt iterations 0..upto from here
    upto: int = 0
    sig: list[tuple[str, str]] = field(default_factory=list)
    measure_src: Cell | None = None  # and the boundary measurement before iteration upto+1


def plan_reuse(cell: Cell, finished: list[Cell]) -> Plan:
    """What `cell` can adopt from finished cells of the same (policy, seed)."""
    peers = [f for f in finished if f.group == cell.group and f.dir != cell.dir and f.run.has(0, "evaluate")]
    if not peers:
        return Plan()
    plan = Plan(src=peers[0], upto=0)
    sig: list[tuple[str, str]] = []
    previous: Choice | None = None
    s, threshold = cell.cfg.schedule, cell.cfg.boundary.threshold
    if races(s.kind, s.rule):
        return plan  # next_choice without the race's result would predict `first`, not the race's winner
    for k in range(1, cell.cfg.iterations + 1):
        cand = [f for f in peers if _common(f.sig, sig) >= k - 1]
        msrc = next((f for f in cand if f.run.has(k, "measure")), None)
        if cell.kind in ("path", *PURE, *MIXED):  # decided without a measurement
            choice = next_choice(s, threshold, k, None, previous)
        elif msrc is None:
            break
        else:
            try:
                choice = next_choice(s, threshold, k, msrc.run.read_stage(k, "measure"), previous)
            except ValueError:  # that measurement lacks what this cell's rule reads: the cell measures itself
                break
        plan.measure_src = msrc
        if choice.source not in PURE:
            break
        step = (cell.method, choice.source)
        nxt = next((f for f in cand if _common(f.sig, sig + [step]) >= k and f.run.has(k, "evaluate")), None)
        if nxt is None:
            break
        sig.append(step)
        previous = choice
        plan.src, plan.upto, plan.sig, plan.measure_src = nxt, k, list(sig), None
    return plan


def adopt(cell: Cell, plan: Plan) -> str:
    """Copy the planned prefix into the cell's (unstarted) directory; a log note, or "" if nothing."""
    if plan.src is None:
        return ""
    k = plan.upto + 1
    lend = plan.measure_src.run if plan.measure_src is not None and k <= cell.cfg.iterations else None
    if not cell.run.adopt(plan.src.run, plan.upto, measure_from=lend, redo=("decide",)):
        return ""
    note = f"adopted iterations 0..{plan.upto} from {plan.src.id}"
    if lend is not None and cell.run.has(k, "measure"):
        note += f" + boundary score of iteration {k} from {plan.measure_src.id}"
    return note


def check_adopted(cell: Cell, plan: Plan) -> None:
    real = realised(cell)
    if real[: len(plan.sig)] != plan.sig:
        raise GridError(f"{cell.dir}: this cell adopted iterations 1..{plan.upto} for data sources "
                        f"{[s for _, s in plan.sig]} but its schedule decided {[s for _, s in real]}; "
                        f"delete {cell.dir} and re-run the grid")
