"""Which number a run reports as its result, and what tables and plots call it.

Its own module, without torch, because the report and the grid metrics read finished runs and
must not pay for importing the evaluation machinery (torch, transformers, TRL) to name a metric.
"""

from __future__ import annotations


#: a run's headline metric, in order of preference: the ground truth's reward when the world knows
#: it; else the judge's mean score; a pairwise-only judge (PairRM, an LLM endpoint) has no score, so
#: then its win rate against the reference answers given with the prompts, else against the initial
#: policy's answers. Each with a short name for table columns and a long one for plots.
HEADLINE: dict[str, tuple[str, str]] = {
    "reward": ("reward", "ground-truth reward"),
    "judge_score": ("judge score", "judge score"),
    "win_rate_given_judge": ("win rate vs refs", "judge win rate vs the given references"),
    "win_rate_judge": ("win rate vs init", "judge win rate vs the initial policy"),
}


def headline(metrics: dict) -> tuple[str, dict]:
    """(name, estimate) of the headline metric in an evaluation's metrics."""
    for key in HEADLINE:
        if metrics.get(key) is not None:
            return key, metrics[key]
    raise KeyError(f"evaluation has none of {list(HEADLINE)}")


def metric_label(key: str, long: bool = False) -> str:
    return HEADLINE[key][1 if long else 0]
