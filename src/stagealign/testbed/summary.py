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
             f"fingerprint {cfg.fingerprint()}  vocabulary {len(world.vocab)} tokens", ""]
    best = [world.best_answer(p) for p in prompts]
    lines.append(f"reference best answers: mean r* {np.mean([b[1] for b in best]):.3f}")
    writers = [("pool", w) for w in cfg.pool] + [(f"SFT corpus of '{n}'", p.corpus) for n, p in cfg.policies.items()]
    lines.append(f"{'writer':34s} {'mean r*':>8s} {'sd':>6s} {'min':>7s} {'max':>7s}")
    all_r = []
    for kind, w in writers:
        ans = world.write(w, prompts, 1, rng)
        r = world.rewards(prompts, [a[0] for a in ans])
        all_r.extend(r)
        lines.append(f"{kind + ' ' + w.name:34s} {r.mean():8.3f} {r.std():6.3f} {r.min():7.3f} {r.max():7.3f}")
    lines.append(f"reward range over these answers: {min(all_r):.3f} .. {max(all_r):.3f}")
    lines.append("")
    lines.append("samples (prompt => best answer, r*):")
    for p, (a, r) in list(zip(prompts, best))[:3]:
        lines.append(f"  {p} => {a}   ({r:.3f})")
    return "\n".join(lines)
