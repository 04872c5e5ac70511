"""`stagealign world show`: what a drawn world looks like, in numbers; and what a checkpoint's
answers look like in the world's terms (`answer_stats`, the testbed's `Plugin.decompose`)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from stagealign.testbed.world import World, WorldConfig

#: `answer_stats`' statistics of a set of answers, each a mean over the answers, in table order.
#: The names live here only: the core shows whatever a plugin's decomposition holds.
STATS = {
    "knowledge_rate": "share of answers holding at least one right knowledge token (of the prompt's family)",
    "wrong_knowledge_rate": "share of answers holding a knowledge token of another family",
    "utility_per_word": "content utility (sum over distinct content words) per content-word token; mean over "
                        "the answers that have a content word",
    "length": "tokens per answer (all tokens, as r*'s length part counts them)",
    "repeat_share": "share of answers repeating a word (content word or knowledge token)",
}
#: the mean of each part of `World.decompose`, named PART_PREFIX + part (they sum to `reward`)
PART_PREFIX = "r_"
#: the statistics a compact table (the grid report) shows, in order
COLUMNS = ("knowledge_rate", "utility_per_word", "length", "repeat_share")


def answer_stats(world: World, pairs: Iterable[tuple[str, str]]) -> dict[str, float | int | None]:
    """Mean statistics of (prompt text, answer) pairs: `answers` (how many), the `STATS`, the mean
    of each `World.decompose` part (`r_utility`, `r_phrase`, ...) and the mean `reward` (r*).
    `utility_per_word` is None when no answer has a content word; every other value is 0 for no
    answers."""
    rows = []
    for prompt, answer in pairs:
        n = world.answer_counts(prompt, answer)
        parts = world.decompose(prompt, answer)
        content_u = parts["utility"] * world.cfg.target_len  # decompose divides it by target_len
        rows.append(({"knowledge_rate": float(n["right_knowledge"] > 0),
                      "wrong_knowledge_rate": float(n["wrong_knowledge"] > 0),
                      "utility_per_word": content_u / n["content"] if n["content"] else None,
                      "length": float(n["tokens"]), "repeat_share": float(n["repeats"] > 0)},
                     parts, world.reward(prompt, answer)))
    out: dict[str, float | int | None] = {"answers": len(rows)}
    for key in STATS:
        vals = [s[key] for s, _, _ in rows if s[key] is not None]
        out[key] = float(np.mean(vals)) if vals else (None if key == "utility_per_word" else 0.0)
    any_prompt = world.prompts("train")[0]
    for name in (rows[0][1] if rows else world.decompose(any_prompt, "")):  # the parts, in decompose's order
        out[PART_PREFIX + name] = float(np.mean([p[name] for _, p, _ in rows])) if rows else 0.0
    out["reward"] = float(np.mean([r for _, _, r in rows])) if rows else 0.0
    return out


def answer_stats_by_id(world: World, pairs: Iterable[tuple[str, str]]) -> dict[str, float | int | None]:
    """`answer_stats` of (prompt id, answer) pairs, as a run's artifacts hold them (eval_answers.jsonl):
    the ids are those of the world's prompts (`data.schema.prompt_id` of their text), any split."""
    from stagealign.data.schema import prompt_id

    text = {prompt_id(p): p for split in ("train", "probe", "eval") for p in world.prompts(split)}
    resolved = []
    for pid, answer in pairs:
        if pid not in text:
            raise ValueError(f"prompt id {pid!r} is not a prompt of this world (seed {world.cfg.seed}, "
                             f"scale {world.cfg.scale}); were the answers made with another world config?")
        resolved.append((text[pid], answer))
    return answer_stats(world, resolved)


def describe(cfg: WorldConfig, n_prompts: int = 200) -> str:
    world = World(cfg)
    prompts = world.prompts("train")[:n_prompts]
    rng = np.random.default_rng(cfg.seed)
    lines = [f"world seed {cfg.seed}, scale {cfg.scale}: {cfg.n_families} families x {cfg.n_modifiers} modifiers, "
             f"{cfg.n_words} words, answers up to {cfg.max_answer_words} words (target {cfg.target_len}), "
             f"{cfg.n_phrases} phrases per family, BT temperature {cfg.bt_temperature}",
             f"coverage knob: {cfg.knowledge_tokens} knowledge tokens per family, kappa {cfg.kappa}, wrong-knowledge "
             f"penalty {cfg.wrong_knowledge_penalty}, length-balanced pool {cfg.pool_length_balanced}",
             f"fingerprint {cfg.fingerprint()}  vocabulary {len(world.vocab)} tokens", ""]
    best = [world.best_answer(p) for p in prompts]
    lines.append(f"reference best answers: mean r* {np.mean([b[1] for b in best]):.3f}")
    writers = [("pool", w) for w in cfg.pool] + [(f"SFT corpus of '{n}'", p.corpus) for n, p in cfg.policies.items()]
    lines.append(f"{'writer':34s} {'mean r*':>8s} {'sd':>6s} {'min':>7s} {'max':>7s}")
    all_r, parts = [], []
    for kind, w in writers:
        ans = world.write(w, prompts, 1, rng)
        r = world.rewards(prompts, [a[0] for a in ans])
        all_r.extend(r)
        lines.append(f"{kind + ' ' + w.name:34s} {r.mean():8.3f} {r.std():6.3f} {r.min():7.3f} {r.max():7.3f}")
        dec = [world.decompose(p, a[0]) for p, a in zip(prompts, ans)]
        mean_len = np.mean([len(a[0].split()) for a in ans])
        parts.append((kind + " " + w.name, {k: np.mean([d[k] for d in dec]) for k in dec[0]}, mean_len,
                      f"{len(world.known_families(w))}/{cfg.n_families}"))
    lines.append(f"reward range over these answers: {min(all_r):.3f} .. {max(all_r):.3f}")
    lines.append("")
    keys = list(parts[0][1])
    lines.append("mean r* decomposition per writer (the parts sum to r*; length = mean tokens per answer; "
                 "known = families whose knowledge tokens it knows):")
    lines.append(f"{'writer':42s} " + " ".join(f"{k[:9]:>9s}" for k in keys) + f" {'length':>6s} {'known':>6s}")
    for name, mean, mean_len, known in parts:
        lines.append(f"{name:42s} " + " ".join(f"{mean[k]:9.3f}" for k in keys) + f" {mean_len:6.2f} {known:>6s}")
    lines.append("")
    lines.append("samples (prompt => best answer, r*):")
    for p, (a, r) in list(zip(prompts, best))[:3]:
        lines.append(f"  {p} => {a}   ({r:.3f})")
    return "\n".join(lines)
