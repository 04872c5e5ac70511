import numpy as np
import pytest

from stagealign.testbed.judges import GroundTruthJudge, NoisyJudge
from stagealign.testbed.tokenizer import build_tokenizer
from stagealign.testbed.world import World, WorldConfig, WriterSpec


@pytest.fixture(scope="module")
def world():
    return World(WorldConfig(scale="small"))


def test_reward_structure(world):
    p = world.prompts("train")[0]
    best, r_best = world.best_answer(p)
    words = best.split()
    assert world.reward(p, best + " " + words[0]) < r_best  # a repeated word costs
    assert world.reward(p, best + " <unk>") < r_best  # a non-word costs
    assert world.reward(p, " ".join(words[:1])) < r_best  # far from the target length costs
    a, b = world.phrases(p)[0]
    assert world.reward(p, f"{a} {b}") - world.reward(p, f"{b} {a}") == pytest.approx(world.cfg.phrase_bonus)


def test_splits_are_disjoint_and_deterministic(world):
    tr, pr, ev = (set(world.prompts(s)) for s in ("train", "probe", "eval"))
    assert not (tr & pr) and not (tr & ev) and not (pr & ev)
    assert World(WorldConfig(scale="small")).prompts("eval") == world.prompts("eval")
    assert World(WorldConfig(scale="small", seed=1)).prompts("eval") != world.prompts("eval")


def test_reward_grows_with_the_quality_of_writers(world):
    rng = np.random.default_rng(0)
    ps = world.prompts("train")[:100]
    means = []
    for q in (0.0, 1.0, 3.0):
        w = WriterSpec(name="x", quality=q, style_strength=0.5, length_mean=6)
        ans = world.write(w, ps, 1, rng)
        means.append(world.rewards(ps, [a[0] for a in ans]).mean())
    assert means[0] < means[1] < means[2]


def test_pool_writers_differ_in_style(world):
    """Distinct writers of equal quality still write different answers (the pool's diversity)."""
    rng = np.random.default_rng(0)
    ps = world.prompts("train")[:50]
    a = world.write(WriterSpec(name="a", quality=1.0, style_strength=2.0), ps, 1, rng)
    b = world.write(WriterSpec(name="b", quality=1.0, style_strength=2.0), ps, 1, rng)
    overlap = np.mean([len(set(x[0].split()) & set(y[0].split())) / len(set(x[0].split()) | set(y[0].split()))
                       for x, y in zip(a, b)])
    assert overlap < 0.5


def test_tokenizer_round_trip(world):
    tok = build_tokenizer(world)
    text = world.prompts("train")[0] + " => w1 w2"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_noisy_judge_is_antisymmetric_deterministic_and_calibrated(world):
    truth, noisy = GroundTruthJudge(world), NoisyJudge(world, seed=0)
    rng = np.random.default_rng(1)
    ps = world.prompts("train")[:200]
    w1 = world.write(WriterSpec(name="a", quality=1.0), ps, 1, rng)
    w2 = world.write(WriterSpec(name="b", quality=1.5), ps, 1, rng)
    a, b = [x[0] for x in w1], [x[0] for x in w2]
    p_ab, p_ba = noisy.prob(ps, a, b), noisy.prob(ps, b, a)
    assert set(np.unique(p_ab)) <= {0.0, 0.5, 1.0}
    assert np.allclose(p_ab + p_ba, 1.0)
    assert np.array_equal(p_ab, noisy.prob(ps, a, b))
    assert abs(p_ab.mean() - truth.prob(ps, a, b).mean()) < 0.1  # labels follow P*
    assert noisy.pairwise_only and not truth.pairwise_only


def test_world_config_rejects_bad_values():
    with pytest.raises(ValueError):
        WorldConfig(target_len=20, max_answer_words=10)
    with pytest.raises(ValueError):
        WorldConfig(bt_temperature=0)
    with pytest.raises(ValueError):
        WorldConfig(n_wrods=3)


def test_scale_must_fit_the_prompt_grid_so_splits_never_overlap():
    with pytest.raises(ValueError, match="needs 11216 distinct prompts"):
        WorldConfig(scale="large")
    w = World(WorldConfig(scale="large", n_modifiers=40))
    tr, pr, ev = (set(w.prompts(s)) for s in ("train", "probe", "eval"))
    assert len(tr) == 8192 and len(pr) == 2000 and not (tr & pr) and not (tr & ev) and not (pr & ev)


def test_fingerprint_depends_on_scale():
    assert WorldConfig(scale="small").fingerprint() != WorldConfig(scale="default").fingerprint()


def test_controlled_single_source_pool_trades_diversity_for_quality():
    """The paper's de-confounding pool: one strong writer x 4 samples vs four different writers."""
    from stagealign.data.diagnostics import diagnose_sets
    from stagealign.data.schema import Prompt
    from stagealign.testbed.provider import static_pool
    from stagealign.testbed.judges import GroundTruthJudge
    from stagealign.data.pairs import score_sets

    multi_cfg = WorldConfig(scale="small")
    best = max(multi_cfg.pool, key=lambda w: w.quality)
    single_cfg = multi_cfg.model_copy(update={"pool": [best], "pool_samples": 4})
    assert single_cfg.fingerprint() == multi_cfg.fingerprint()  # same initial policies
    out = {}
    for name, cfg in (("multi", multi_cfg), ("single", single_cfg)):
        world = World(cfg)
        prompts = [Prompt(str(i), t) for i, t in enumerate(world.prompts("train")[:100])]
        sets = list(static_pool(world, prompts).values())
        score_sets(sets, GroundTruthJudge(world))
        out[name] = (sets, diagnose_sets(sets))
    single_sets, single = out["single"]
    multi_sets, multi = out["multi"]
    assert {src for s in single_sets for src in s.sources} == {best.name}
    assert single["ngram_diversity"]["mean"] < multi["ngram_diversity"]["mean"]
    assert single["quality_mean"]["mean"] > multi["quality_mean"]["mean"]


def test_default_world_is_unchanged_by_the_coverage_knob():
    """Pinned from the world before the coverage knob existed (issue 15): the fingerprint keys the
    SFT cache, and the default world's vocabulary, prompts, writers' output and rewards are the
    data every recorded result was made on."""
    import hashlib
    import json

    assert WorldConfig().fingerprint() == "68e5af4782d02e25"
    c = WorldConfig(scale="small")
    assert c.fingerprint() == "8ea60a7f7078ae11"
    w = World(c)
    assert len(w.vocab) == 77 and hashlib.sha256(" ".join(w.vocab).encode()).hexdigest()[:16] == "909a4932b7f935bf"
    prompts = json.dumps({s: w.prompts(s) for s in ("train", "probe", "eval")})
    assert hashlib.sha256(prompts.encode()).hexdigest()[:16] == "c05a1bbf516e7bbb"
    ps = w.prompts("train")[:20]
    rng = np.random.default_rng(0)
    writes = [w.write(wr, ps, 2, rng) for wr in list(c.pool) + [p.corpus for p in c.policies.values()]]
    assert hashlib.sha256(json.dumps(writes).encode()).hexdigest()[:16] == "73cd2d83a2794344"
    answers = ["w1 w2 w3 w4 w5 w6", "w7 w7 w8 <unk>", "k0_0 w3", "", "t1 m2 w9 w9 w9"]
    assert [w.reward(ps[0], a) for a in answers] == [0.20703050347945862, -2.0136404699390926, -1.9936023395101674,
                                                     -1.5, -3.4616612098467607]  # exact, not approx
