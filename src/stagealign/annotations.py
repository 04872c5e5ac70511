"""Pairwise annotations of a finished run's evaluation, in AlpacaEval's format, and its
length-controlled win rate.

Judges like long answers, and DPO learns to write them; AlpacaEval's length-controlled win rate
fits a GLM that predicts the preference with the length difference set to zero. We do not
re-implement that GLM: `annotations` writes the evaluation as AlpacaEval annotation rows
(``instruction``, ``output_1`` = the reference, ``output_2`` = the policy's answer,
``generator_1/2``, ``annotator``, ``preference`` in [1, 2] where 2 means the policy won, soft when
the judge gives probabilities), and `length_controlled` hands them to
``alpaca_eval.metrics.get_length_controlled_winrate`` (optional extra ``stagealign[alpaca-eval]``).
Its GLM is fitted with AlpacaEval's own instruction-difficulty table (downloaded from the hub on
first use), so the length-controlled figure is meaningful on AlpacaEval's instructions; the
annotation rows and the raw win rate are meaningful for any prompts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stagealign.config import load_config
from stagealign.rundir import RunDir


class AnnotationError(ValueError):
    """The run directory cannot give annotations (unfinished iteration, no references)."""


def annotations(run_dir: str | Path, iteration: int, against: str = "auto") -> list[dict]:
    """AlpacaEval rows for `iteration`'s evaluation answers of a finished run, judged again by the
    run's judge against the references given with the prompts (`given`), the initial policy's
    answers (`initial`), or the former when the prompts have them (`auto`)."""
    from stagealign.providers import build_provider

    d = RunDir(run_dir)
    answers_path = d.file(iteration, "eval_answers.jsonl")
    if not d.config_path.is_file() or not answers_path.is_file():
        raise AnnotationError(f"{d.root}: iteration {iteration} has no evaluation answers "
                              f"({answers_path.name} missing); is the run finished?")
    # the run's prompts and judge, read from its config: nothing is loaded but the judge
    provider = build_provider(load_config(d.config_path), log=lambda msg: None)
    prompts = provider.eval
    given = {p.id: p.reference for p in prompts if p.reference}
    if against not in ("auto", "given", "initial"):
        raise AnnotationError(f"against must be auto, given or initial; got {against!r}")
    if against == "given" and not given:
        raise AnnotationError(f"{d.root}: the eval prompts carry no reference answers (a `reference` column in the pool)")
    if against == "initial" or (against == "auto" and not given):
        initial = {r["prompt_id"]: r["answers"] for r in d.read_rows(0, "eval_answers.jsonl")}
        refs, ref_name = {pid: a[0] for pid, a in initial.items() if a}, "policy@0"
    else:
        refs, ref_name = given, "reference"
    mine = {r["prompt_id"]: r["answers"] for r in d.read_rows(iteration, "eval_answers.jsonl")}
    rows = [{"instruction": p.text, "output_1": refs[p.id], "output_2": a, "prompt_id": p.id}
            for p in prompts if p.id in refs for a in mine.get(p.id, [])]
    if not rows:
        raise AnnotationError(f"{d.root}: no evaluation answer has a reference to compare with")
    judge = provider.judge
    probs = judge.prob([r["instruction"] for r in rows], [r["output_2"] for r in rows],
                       [r["output_1"] for r in rows])
    for r, p in zip(rows, np.asarray(probs, dtype=float)):
        r.update(generator_1=ref_name, generator_2=f"policy@{iteration}", annotator=judge.name,
                 preference=1.0 + float(p))
    return rows


def annotate(run_dir: str | Path, iteration: int, against: str = "auto", lc: bool = False) -> dict:
    """`stagealign annotate`: write ``annotations.json`` beside `iteration`'s evaluation (holding
    the run's lock, so a run still writing there is refused) and return what to print."""
    d = RunDir(run_dir)
    if not d.config_path.is_file():
        raise AnnotationError(f"{d.root}: not a run directory (no {d.config_path.name})")
    with d.session():
        rows = annotations(d.root, iteration, against)
        out = d.write_file_json(iteration, "annotations.json", rows)
    result = {"annotations": str(out), "comparisons": len(rows), "against": rows[0]["generator_1"],
              "win_rate": raw_win_rate(rows)}
    if lc:
        result.update(length_controlled(rows))
    return result


def raw_win_rate(rows: list[dict]) -> float:
    """Share of comparisons the policy won (soft preferences count fractionally), in percent."""
    return 100.0 * float(np.mean([r["preference"] - 1.0 for r in rows]))


def length_controlled(rows: list[dict]) -> dict:
    """AlpacaEval's metrics for the rows: win_rate, standard_error, length_controlled_winrate, ..."""
    try:
        import pandas as pd
        from alpaca_eval.metrics import get_length_controlled_winrate
    except ImportError as exc:
        raise AnnotationError("the length-controlled win rate needs the optional extra: "
                              "pip install 'stagealign[alpaca-eval]'") from exc
    df = pd.DataFrame(rows)
    return {k: float(v) for k, v in get_length_controlled_winrate(df, save_weights_dir=None).items()
            if isinstance(v, (int, float, np.floating))}
