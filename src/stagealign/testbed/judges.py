"""Judges of the synthetic world: the exact ground truth and a noisy pairwise ranker."""

from __future__ import annotations

import hashlib

import numpy as np

from stagealign.judges.base import Judge, bradley_terry
from stagealign.testbed.world import World


class GroundTruthJudge(Judge):
    """Scores are r*(x, y); pairwise probabilities are the true Bradley-Terry P*."""

    def __init__(self, world: World):
        self.world = world
        self.name = "ground_truth"
        self.temperature = world.cfg.bt_temperature

    def _score(self, prompts: list[str], answers: list[str]) -> np.ndarray:
        return self.world.rewards(prompts, answers)


class NoisyJudge(Judge):
    """An imperfect pairwise ranker: hard labels drawn from P*(a > b), like PairRM's errors.

    The label of a given (prompt, a, b) is a fixed function of the texts and the seed (drawn
    from a hash), so the same comparison always gets the same verdict, as with a real model,
    and runs stay deterministic. Labels are antisymmetric: prob(b, a) = 1 - prob(a, b).
    """

    pairwise_only = True

    def __init__(self, world: World, seed: int = 0):
        self.world = world
        self.seed = int(seed)  # a config may give 1.0; the hash must not depend on how it was written
        self.name = "noisy"
        self.temperature = world.cfg.bt_temperature

    def _uniform(self, prompt: str, a: str, b: str) -> float:
        h = hashlib.blake2b(f"{self.seed}\x00{prompt}\x00{a}\x00{b}".encode(), digest_size=8).digest()
        return int.from_bytes(h, "little") / 2**64

    def _prob(self, prompts: list[str], a: list[str], b: list[str]) -> np.ndarray:
        p = bradley_terry(self.world.rewards(prompts, a), self.world.rewards(prompts, b), self.temperature)
        out = np.empty(len(a))
        for i, (x, ai, bi) in enumerate(zip(prompts, a, b)):
            if ai == bi:
                out[i] = 0.5
            elif ai < bi:  # canonical order makes the label antisymmetric
                out[i] = float(self._uniform(x, ai, bi) < p[i])
            else:
                out[i] = 1.0 - float(self._uniform(x, bi, ai) < 1.0 - p[i])
        return out
