"""The synthetic world: prompts, a known reward on text, and answer writers of set quality.

Why it looks like this. The paper's claim is about *where preferred answers live* relative to
the policy: a policy that does not yet know it (injection stage) needs diverse candidates that
cover the good region; a policy that already produces answers as good as the pool needs
candidates close to its own distribution. So the world needs (1) a reward that is structured
enough that finding good answers takes learning, not luck, (2) external writers of different
quality and style, like UltraFeedback's many models, and (3) corpora to SFT initial policies
below and above the pool's quality. All of it is drawn from `WorldConfig.seed`.

Text:    prompt  = "t<f> m<i> m<j>"      a family token and two modifier tokens
         answer  = "w<a> w<b> ..."        content words, at most `max_answer_words`
Reward:  r*(x, y) = sum_{distinct w in y} u_x[w] / target_len       (word utilities)
                  + phrase_bonus * (#phrases of x's family present as adjacent bigrams)
                  - repeat_penalty * (#repeated words)
                  - length_penalty * |len(y) - target_len|
                  - invalid_penalty * (#tokens that are not content words)
         u_x = u_family + modifier_strength * mean(u_modifier_i, u_modifier_j)
Preference: P*(a > b | x) = sigmoid((r*(x, a) - r*(x, b)) / bt_temperature)  (Bradley-Terry).

A writer (pool model or SFT corpus) with quality q and style s draws its words without
replacement from softmax(q * u_x + style_strength * s_writer) (Gumbel top-k), inserts the
second word of a family phrase after its first with probability `phrase_rate`, and draws its
length around `length_mean`. Higher q concentrates mass on high-utility words; distinct styles
make writers' answers differ from each other, which is where the pool's diversity comes from.

Quality gap and coverage gap. With the defaults every content word has non-negligible probability
under every writer, so a weak policy is worse than the pool only in *quality* (it has the words and
uses them badly). The coverage knob adds `knowledge_tokens` per family, `k<f>_<j>`, outside the
content vocabulary:
         r* += kappa * (#distinct knowledge tokens of x's family in y)
             - wrong_knowledge_penalty * (#knowledge tokens of other families in y)
Repeats of knowledge tokens count as repeats; every token counts in the length. A writer knows a
share `WriterSpec.knowledge` of the families (which ones: drawn from the world seed and the
writer's name) and never emits a knowledge token of a family it does not know; on a prompt of a
family it knows it inserts each of the family's tokens with probability `knowledge_rate`. A policy
SFT'd on a corpus without the knowledge has the tokens in its vocabulary but never in its data, so
it cannot sample them, while a pool writer that knows them puts them in the static answers: the
injection stage's coverage gap. Controls: `pool_length_balanced` (all pool writers share one
length distribution, the answer's total length) and `WriterSpec.repeat_rate` (static answers can
repeat words too). `World.decompose` splits r* into its parts. Every default keeps the
quality-gap world bit for bit (vocabulary, prompts, rewards, writers' output, fingerprint).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

SEP = "=>"
SPECIAL_TOKENS = {"pad": "<pad>", "unk": "<unk>", "bos": "<s>", "eos": "</s>"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WriterSpec(_Strict):
    """An answer writer: a static-pool model or the corpus an initial policy is SFT'd on."""

    name: str
    quality: float = Field(ge=0.0, le=10.0, description="inverse temperature on utilities; 0 = random words")
    style_strength: float = Field(1.0, ge=0.0, le=5.0, description="weight of the writer's own word bias")
    phrase_rate: float = Field(0.0, ge=0.0, le=1.0, description="chance to complete a family phrase")
    length_mean: float = Field(6.0, ge=1.0, le=32.0, description="mean answer length in words")
    length_sd: float = Field(1.5, ge=0.0, le=8.0)
    knowledge: float = Field(0.0, ge=0.0, le=1.0, description="share of families whose knowledge tokens the "
                             "writer knows (which ones: drawn from the world seed and the writer's name); "
                             "it never emits a knowledge token of a family it does not know")
    knowledge_rate: float = Field(0.8, ge=0.0, le=1.0, description="on a prompt of a family it knows, the chance "
                                  "to insert each of the family's knowledge tokens (at a random position)")
    repeat_rate: float = Field(0.0, ge=0.0, le=1.0, description="chance that a written word (after the first) "
                               "is replaced by a repeat of an earlier word of the answer")


class PolicySpec(_Strict):
    """How an initial policy is made: SFT on `examples` answers of one corpus writer."""

    corpus: WriterSpec
    examples: int = Field(8192, ge=16, le=1_000_000)
    epochs: int = Field(6, ge=1, le=50)
    learning_rate: float = Field(3e-3, gt=0, le=1.0)


class ModelSpec(_Strict):
    """The tiny transformer every policy of the world uses (a real LlamaForCausalLM)."""

    hidden_size: int = Field(64, ge=8, le=4096)
    layers: int = Field(2, ge=1, le=48)
    heads: int = Field(4, ge=1, le=64)
    intermediate_size: int = Field(128, ge=8, le=16384)


def _default_pool() -> list[WriterSpec]:
    return [
        WriterSpec(name="pool-a", quality=0.5, style_strength=1.5, phrase_rate=0.1, length_mean=4.0),
        WriterSpec(name="pool-b", quality=1.0, style_strength=1.0, phrase_rate=0.3, length_mean=8.0),
        WriterSpec(name="pool-c", quality=2.0, style_strength=1.0, phrase_rate=0.5, length_mean=6.0),
        WriterSpec(name="pool-d", quality=3.0, style_strength=0.5, phrase_rate=0.7, length_mean=5.0),
    ]


def _default_policies() -> dict[str, PolicySpec]:
    return {
        "weak": PolicySpec(corpus=WriterSpec(name="weak-corpus", quality=0.2, style_strength=1.0,
                                             phrase_rate=0.0, length_mean=8.0, length_sd=2.0)),
        "boundary": PolicySpec(corpus=WriterSpec(name="boundary-corpus", quality=1.2, style_strength=1.0,
                                                 phrase_rate=0.3, length_mean=6.0)),
        "strong": PolicySpec(corpus=WriterSpec(name="strong-corpus", quality=3.0, style_strength=0.3,
                                               phrase_rate=0.8, length_mean=6.0, length_sd=1.0)),
    }


SCALES: dict[str, dict[str, int]] = {
    # prompts per split; small runs in seconds for tests, large is research size on a GPU
    "small": {"train": 256, "probe": 64, "eval": 128},
    "default": {"train": 1024, "probe": 256, "eval": 256},
    "large": {"train": 8192, "probe": 2000, "eval": 1024},  # needs n_modifiers >= 38 with 8 families
}


class WorldConfig(_Strict):
    """Every parameter of the world, with the range in which conclusions are meant to hold."""

    seed: int = Field(0, ge=0, description="draws utilities, phrases, styles and prompts")
    scale: Literal["small", "default", "large"] = "default"
    n_words: int = Field(48, ge=8, le=4096, description="content vocabulary size")
    n_families: int = Field(8, ge=1, le=512, description="prompt families (topics)")
    n_modifiers: int = Field(16, ge=2, le=512, description="modifier tokens; two per prompt")
    modifier_strength: float = Field(0.5, ge=0.0, le=2.0)
    target_len: int = Field(6, ge=1, le=32)
    max_answer_words: int = Field(10, ge=2, le=64)
    n_phrases: int = Field(2, ge=0, le=16, description="ordered bigram phrases per family")
    phrase_bonus: float = Field(0.6, ge=0.0, le=5.0)
    repeat_penalty: float = Field(0.5, ge=0.0, le=5.0)
    length_penalty: float = Field(0.25, ge=0.0, le=5.0)
    invalid_penalty: float = Field(1.0, ge=0.0, le=5.0)
    bt_temperature: float = Field(0.5, gt=0.0, le=10.0, description="tau of P*; lower = sharper preferences")
    pool: list[WriterSpec] = Field(default_factory=_default_pool, min_length=1)
    pool_samples: int = Field(1, ge=1, le=16, description="answers per pool writer per prompt; one writer x K "
                              "samples is the paper's controlled single-source pool (quality without diversity)")
    policies: dict[str, PolicySpec] = Field(default_factory=_default_policies)
    model: ModelSpec = Field(default_factory=ModelSpec)
    # ---- coverage knob (defaults: no knowledge tokens, the quality-gap world) ----
    knowledge_tokens: int = Field(0, ge=0, le=64, description="knowledge tokens per family (k<f>_<j>), outside "
                                  "the content vocabulary; 0 = none (vocabulary and tokenizer unchanged)")
    kappa: float = Field(0.0, ge=0.0, le=5.0, description="reward per distinct knowledge token of the prompt's family")
    wrong_knowledge_penalty: float = Field(0.5, ge=0.0, le=5.0, description="cost per knowledge token of "
                                           "another family")
    pool_length_balanced: bool = Field(False, description="control: every pool writer draws its answer's total "
                                       "length from one shared distribution (mean and sd averaged over the "
                                       "pool's writers), phrases and knowledge tokens included")

    @model_validator(mode="after")
    def _check(self) -> "WorldConfig":
        names = [w.name for w in self.pool]
        if len(set(names)) != len(names):
            raise ValueError(f"pool writer names must be unique, got {names}")
        if self.target_len > self.max_answer_words:
            raise ValueError("target_len must not exceed max_answer_words")
        if self.n_phrases * 2 > self.n_words:
            raise ValueError("n_phrases * 2 must not exceed n_words")
        if self.knowledge_tokens >= self.max_answer_words:
            raise ValueError("knowledge_tokens must be below max_answer_words (they are answer tokens)")
        need = sum(SCALES[self.scale].values())
        have = self.n_families * self.n_modifiers * (self.n_modifiers - 1)
        if need > have:
            raise ValueError(
                f"scale {self.scale!r} needs {need} distinct prompts (train + probe + eval must not overlap) "
                f"but n_families x n_modifiers x (n_modifiers - 1) = {have}; raise n_modifiers or n_families")
        return self

    def fingerprint(self) -> str:
        """Hash of everything that shapes the world's initial policies (their cache key): the scale
        is part of it because the SFT corpora are drawn from the scale's training prompts; the
        static pool is not, since no policy is trained on it, and neither is the price of knowledge
        tokens. (The other reward parameters stay in the key, as they always were.)"""
        # kappa and the wrong-knowledge penalty only price knowledge tokens in the reward; no corpus
        # depends on them, so a kappa sweep shares one set of initial policies
        dump = self.model_dump(exclude={"pool", "pool_samples", "pool_length_balanced", "kappa",
                                        "wrong_knowledge_penalty"})
        # the coverage knob's fields enter the key only when set away from their defaults, so the
        # worlds (and cached policies) made before the knob existed keep their fingerprint
        for key, default in _KNOB_WORLD_DEFAULTS.items():
            if dump[key] == default:
                del dump[key]
        for spec in dump["policies"].values():
            for key, default in _KNOB_WRITER_DEFAULTS.items():
                if spec["corpus"][key] == default:
                    del spec["corpus"][key]
        blob = json.dumps(dump, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


_KNOB_WORLD_DEFAULTS = {k: WorldConfig.model_fields[k].default for k in ("knowledge_tokens",)}
_KNOB_WRITER_DEFAULTS = {k: WriterSpec.model_fields[k].default for k in ("knowledge", "knowledge_rate", "repeat_rate")}


@dataclass
class World:
    """A drawn world: utilities, phrases, writer styles and the ground-truth reward."""

    cfg: WorldConfig

    # ---- vocabulary -------------------------------------------------------------------
    @cached_property
    def words(self) -> list[str]:
        return [f"w{i}" for i in range(self.cfg.n_words)]

    @cached_property
    def families(self) -> list[str]:
        return [f"t{i}" for i in range(self.cfg.n_families)]

    @cached_property
    def modifiers(self) -> list[str]:
        return [f"m{i}" for i in range(self.cfg.n_modifiers)]

    @cached_property
    def knowledge(self) -> list[list[str]]:
        """Knowledge tokens per family: `knowledge[f]` = ["k<f>_0", ...] (empty by default)."""
        return [[f"k{f}_{j}" for j in range(self.cfg.knowledge_tokens)] for f in range(self.cfg.n_families)]

    @cached_property
    def _knowledge_family(self) -> dict[str, int]:
        return {t: f for f, toks in enumerate(self.knowledge) for t in toks}

    @cached_property
    def vocab(self) -> list[str]:
        return (list(SPECIAL_TOKENS.values()) + [SEP] + self.families + self.modifiers + self.words
                + [t for toks in self.knowledge for t in toks])

    @cached_property
    def _word_index(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.words)}

    # ---- random structure ---------------------------------------------------------------
    @cached_property
    def _draws(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(self.cfg.seed)
        c = self.cfg
        fam_u = rng.normal(size=(c.n_families, c.n_words))
        mod_u = rng.normal(size=(c.n_modifiers, c.n_words))
        phrases = np.stack([rng.permutation(c.n_words)[: 2 * c.n_phrases].reshape(c.n_phrases, 2)
                            for _ in range(c.n_families)]) if c.n_phrases else np.zeros((c.n_families, 0, 2), int)
        return {"fam_u": fam_u, "mod_u": mod_u, "phrases": phrases}

    def _style(self, writer: WriterSpec) -> np.ndarray:
        """A writer's word bias: fixed per writer name, independent of the world's utilities."""
        h = int(hashlib.sha256(f"{self.cfg.seed}:{writer.name}".encode()).hexdigest()[:8], 16)
        return np.random.default_rng(h).normal(size=self.cfg.n_words)

    def known_families(self, writer: WriterSpec) -> set[int]:
        """The families whose knowledge tokens a writer knows: round(knowledge * n_families) of them,
        fixed per world seed and writer name (independent of its style and of the world's draws)."""
        n = int(round(writer.knowledge * self.cfg.n_families))
        if n == 0 or not self.cfg.knowledge_tokens:
            return set()
        h = int(hashlib.sha256(f"{self.cfg.seed}:{writer.name}:knowledge".encode()).hexdigest()[:8], 16)
        return set(np.random.default_rng(h).permutation(self.cfg.n_families)[:n].tolist())

    def parse_prompt(self, prompt: str) -> tuple[int, list[int]]:
        toks = prompt.split()
        try:
            fam = self.families.index(toks[0])
            mods = [self.modifiers.index(t) for t in toks[1:]]
        except (ValueError, IndexError):
            raise ValueError(f"not a prompt of this world: {prompt!r}") from None
        return fam, mods

    def utilities(self, prompt: str) -> np.ndarray:
        fam, mods = self.parse_prompt(prompt)
        d = self._draws
        u = d["fam_u"][fam].copy()
        if mods:
            u += self.cfg.modifier_strength * d["mod_u"][mods].mean(axis=0)
        return u

    def phrases(self, prompt: str) -> list[tuple[str, str]]:
        fam, _ = self.parse_prompt(prompt)
        return [(self.words[a], self.words[b]) for a, b in self._draws["phrases"][fam]]

    # ---- prompts ----------------------------------------------------------------------
    def prompts(self, split: str, n: int | None = None) -> list[str]:
        """Disjoint prompt splits (train / probe / eval), drawn without overlap."""
        sizes = SCALES[self.cfg.scale]
        order = ["train", "probe", "eval"]
        if split not in order:
            raise ValueError(f"unknown split {split!r}; expected one of {order}")
        all_prompts = self._all_prompts
        start = sum(sizes[s] for s in order[: order.index(split)])
        count = sizes[split] if n is None else min(n, sizes[split])
        return all_prompts[start:start + count]

    @cached_property
    def _all_prompts(self) -> list[str]:
        rng = np.random.default_rng(self.cfg.seed + 7919)
        c = self.cfg
        combos = [(f, i, j) for f in range(c.n_families) for i in range(c.n_modifiers)
                  for j in range(c.n_modifiers) if i != j]
        idx = rng.permutation(len(combos))
        return [f"{self.families[f]} {self.modifiers[i]} {self.modifiers[j]}" for f, i, j in
                (combos[k] for k in idx)]

    # ---- ground truth -----------------------------------------------------------------
    def decompose(self, prompt: str, answer: str) -> dict[str, float]:
        """r*(x, y) split into its signed parts, in the order `reward` adds them (their sum is r*):
        utility (distinct content words' utilities / target_len), phrase (bonus for the family's
        phrases), repetition (repeated content words and knowledge tokens), length (distance to
        target_len, all tokens counted), invalid (tokens that are neither content words nor
        knowledge tokens), knowledge (kappa per distinct right knowledge token) and wrong_knowledge
        (penalty per knowledge token of another family)."""
        c = self.cfg
        toks = answer.split()
        n = self.answer_counts(prompt, answer)
        distinct = {self._word_index[t] for t in toks if t in self._word_index}
        u = self.utilities(prompt)
        parts = {"utility": float(u[list(distinct)].sum()) / c.target_len if distinct else 0.0}
        if c.n_phrases:
            bigrams = set(zip(toks, toks[1:]))
            parts["phrase"] = c.phrase_bonus * sum((a, b) in bigrams for a, b in self.phrases(prompt))
        else:
            parts["phrase"] = 0.0
        parts["repetition"] = -(c.repeat_penalty * n["repeats"])
        parts["length"] = -(c.length_penalty * abs(n["tokens"] - c.target_len))
        parts["invalid"] = -(c.invalid_penalty * n["invalid"])
        parts["knowledge"] = c.kappa * n["right_knowledge"]
        parts["wrong_knowledge"] = -(c.wrong_knowledge_penalty * n["wrong_knowledge"])
        return parts

    def answer_counts(self, prompt: str, answer: str) -> dict[str, int]:
        """The counts `decompose` prices, independent of the prices (so a statistic of answers means
        the same at kappa = 0 or repeat_penalty = 0): tokens (all, as the length part counts them),
        content (content-word tokens, repeats included), distinct_content, repeats (of content words
        and knowledge tokens), invalid, right_knowledge (distinct knowledge tokens of the prompt's
        family) and wrong_knowledge (knowledge tokens of other families, repeats included)."""
        toks = answer.split()
        content = [t for t in toks if t in self._word_index]
        know = [t for t in toks if t in self._knowledge_family]
        fam = self.parse_prompt(prompt)[0]
        return {"tokens": len(toks), "content": len(content), "distinct_content": len(set(content)),
                "repeats": len(content) - len(set(content)) + len(know) - len(set(know)),
                "invalid": len(toks) - len(content) - len(know),
                "right_knowledge": len({t for t in know if self._knowledge_family[t] == fam}),
                "wrong_knowledge": sum(self._knowledge_family[t] != fam for t in know)}

    def reward(self, prompt: str, answer: str) -> float:
        r = 0.0
        for i, v in enumerate(self.decompose(prompt, answer).values()):
            r = v if i == 0 else r + v  # left to right, as the parts were always added (x - y == x + -y)
        return r

    def rewards(self, prompts: list[str], answers: list[str]) -> np.ndarray:
        return np.array([self.reward(p, a) for p, a in zip(prompts, answers)], dtype=np.float64)

    def best_answer(self, prompt: str) -> tuple[str, float]:
        """A good reference answer: top-n words by utility with phrase pairs made adjacent,
        best n. Not guaranteed optimal; used by `world show` to show what good looks like."""
        u = self.utilities(prompt)
        ranked = [self.words[i] for i in np.argsort(-u)]
        know = self.knowledge[self.parse_prompt(prompt)[0]] if self.cfg.kappa > 0 else []
        best, best_r = "", -np.inf
        for extra in ([[]] + ([know] if know else [])):
            for n in range(1, self.cfg.max_answer_words - len(extra) + 1):
                words = ranked[:n]
                for a, b in self.phrases(prompt):
                    if a in words and b in words:
                        words.remove(b)
                        words.insert(words.index(a) + 1, b)
                ans = " ".join(extra + words)
                r = self.reward(prompt, ans)
                if r > best_r:
                    best, best_r = ans, r
        return best, best_r

    # ---- writers ----------------------------------------------------------------------
    def write(self, writer: WriterSpec, prompts: list[str], n: int, rng: np.random.Generator) -> list[list[str]]:
        """`n` answers per prompt from a writer (pool model or SFT corpus)."""
        c = self.cfg
        style = self._style(writer)
        known = self.known_families(writer)
        balanced = c.pool_length_balanced and any(w.name == writer.name for w in c.pool)
        length_mean, length_sd = ((float(np.mean([w.length_mean for w in c.pool])),
                                   float(np.mean([w.length_sd for w in c.pool]))) if balanced
                                  else (writer.length_mean, writer.length_sd))
        out: list[list[str]] = []
        for p in prompts:
            logits = writer.quality * self.utilities(p) + writer.style_strength * style
            phrases = self.phrases(p)
            fam = self.parse_prompt(p)[0]
            know = self.knowledge[fam] if fam in known else []
            answers = []
            for _ in range(n):
                length = int(np.clip(round(rng.normal(length_mean, length_sd)), 1, c.max_answer_words))
                g = logits + rng.gumbel(size=logits.shape)
                words = [self.words[i] for i in np.argsort(-g)[:length]]
                if writer.repeat_rate > 0:  # (no draw at the default 0: writers' output unchanged)
                    for i in range(1, len(words)):
                        if rng.random() < writer.repeat_rate:
                            words[i] = words[int(rng.integers(0, i))]
                for a, b in phrases:
                    if a in words and b not in words and rng.random() < writer.phrase_rate:
                        words.insert(words.index(a) + 1, b)
                for t in know:
                    if rng.random() < writer.knowledge_rate:
                        words.insert(int(rng.integers(0, len(words) + 1)), t)
                if balanced:  # the total length is the drawn one: drop plain content words from the end
                    bigrams = set(zip(words, words[1:]))
                    keep = set(know) | {x for ab in phrases if ab in bigrams for x in ab}
                    i = len(words) - 1
                    while len(words) > length and i >= 0:
                        if words[i] not in keep:
                            del words[i]
                        i -= 1
                    words = words[:length]
                answers.append(" ".join(words[: c.max_answer_words]))
            out.append(answers)
        return out
