"""Pairwise annotations of a finished run's evaluation, in AlpacaEval's format, and its
length-controlled win rate.

Judges like long answers, and DPO learns to write them; AlpacaEval's length-controlled win rate
fits a GLM that predicts the preference with the length difference set to zero. We do not
re-implement that GLM: `annotations` writes the evaluation as AlpacaEval annotation rows
(``instruction``, ``output_1`` = the reference, ``output_2`` = the policy's answer,
``generator_1/2``, ``annotator``, ``preference`` in [1, 2] where 2 means the policy won, soft when
the judge gives probabilities), and `length_controlled` hands them to
``alpaca_eval.metrics.get_length_controlled_winrate`` (optional extra ``stagealign[alpaca-eval]``).
Its GLM looks up each row's instruction difficulty by the row's ``index``: the instruction's
position in AlpacaEval's evaluation set. So the rows are matched to AlpacaEval's instructions by
text (`alpaca_eval_positions`; the set is AlpacaEval's hub file, downloaded once) and any
other instruction is refused: the length-controlled figure exists only for AlpacaEval's
instructions (``data.eval_pool`` evaluates on them), while the annotation rows and the raw win
rate are meaningful for any prompts.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from stagealign.config import load_config
from stagealign.rundir import RunDir


#: where AlpacaEval 2's evaluation set lives (its instructions, in the order its GLM's tables use)
ALPACA_EVAL_REPO = "tatsu-lab/alpaca_eval"
ALPACA_EVAL_SET = "alpaca_eval_gpt4_baseline.json"


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
        raise AnnotationError(f"{d.root}: the eval prompts carry no reference answers (a `reference` column in the "
                              "pool, or the answers of data.eval_pool's rows)")
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


def alpaca_eval_positions(instructions: Sequence[str], alpaca_eval_instructions: Sequence[str]) -> list[int]:
    """Each instruction's position in AlpacaEval's evaluation set (`alpaca_eval_instructions`, in
    its order), matched by text: what the GLM's ``index`` means. Any instruction that is not
    AlpacaEval's is refused in one line, since its difficulty would be another instruction's."""
    where = {text.strip(): i for i, text in enumerate(alpaca_eval_instructions)}
    positions = [where.get(text.strip()) for text in instructions]
    unknown = sorted({text for text, i in zip(instructions, positions) if i is None})
    if unknown:
        raise AnnotationError(
            f"{len(unknown)} of {len(set(instructions))} instructions are not AlpacaEval's (e.g. {unknown[0][:60]!r}); "
            "the length-controlled win rate needs AlpacaEval's instructions: evaluate on them with "
            "data.eval_pool (tatsu-lab/alpaca_eval), or leave out --lc")
    return [int(i) for i in positions]


def length_controlled(rows: list[dict]) -> dict:
    """AlpacaEval's metrics for the rows: win_rate, standard_error, length_controlled_winrate, ...
    Each row is indexed by its instruction's position in AlpacaEval's set (`alpaca_eval_positions`)."""
    try:
        import pandas as pd
        from alpaca_eval.metrics import get_length_controlled_winrate
    except ImportError as exc:
        raise AnnotationError("the length-controlled win rate needs the optional extra: "
                              "pip install 'stagealign[alpaca-eval]'") from exc
    positions = alpaca_eval_positions([r["instruction"] for r in rows], alpaca_eval_instructions())
    df = pd.DataFrame(rows, index=positions)  # the GLM reads the index as the instruction's position
    return {k: float(v) for k, v in get_length_controlled_winrate(df, save_weights_dir=None).items()
            if isinstance(v, (int, float, np.floating))}


def alpaca_eval_instructions() -> list[str]:
    """AlpacaEval 2's instructions in its own order: the file its evaluation set is read from, fetched
    from the hub once like the GLM's own tables (not through alpaca_eval's dataset script, which
    recent `datasets` releases no longer run)."""
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(ALPACA_EVAL_REPO, ALPACA_EVAL_SET, repo_type="dataset")
        return [row["instruction"] for row in json.loads(Path(path).read_text(encoding="utf-8"))]
    except Exception as exc:  # noqa: BLE001 - offline, no access, a changed file: one line either way
        raise AnnotationError(f"cannot read AlpacaEval's instructions ({ALPACA_EVAL_REPO}/{ALPACA_EVAL_SET}) for "
                              f"the length-controlled win rate: {type(exc).__name__}: {exc}".splitlines()[0]) from exc
