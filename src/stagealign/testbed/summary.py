"""`stagealign world show`: what a drawn world looks like, in numbers."""

from __future__ import annotations

import numpy as np

from stagealign.testbed.world import World, WorldConfig


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
