"""The world's coverage knob (issue 15): knowledge tokens outside the content vocabulary that only
some writers know, and the controls (length-balanced pool, writers' repeats, reward decomposition)."""

import numpy as np
import pytest

from stagealign.testbed.summary import describe
from stagealign.testbed.tokenizer import build_tokenizer
from stagealign.testbed.world import World, WorldConfig, WriterSpec

KNOB = dict(scale="small", knowledge_tokens=3, kappa=0.4, wrong_knowledge_penalty=0.7)


@pytest.fixture(scope="module")
def world():
    return World(WorldConfig(**KNOB))


def _tokens(answers):
    return [t for row in answers for a in row for t in a.split()]


def test_knowledge_tokens_are_in_the_vocabulary_and_tokenizer_outside_the_content_words(world):
    assert world.knowledge[2] == ["k2_0", "k2_1", "k2_2"]
    assert len(world.vocab) == 77 + 8 * 3 and not set(world.words) & {t for k in world.knowledge for t in k}
    tok = build_tokenizer(world)
    ids = tok("t0 m1 m2 => k0_1 w3")["input_ids"]
    assert tok.unk_token_id not in ids


def test_a_writer_emits_only_the_knowledge_of_families_it_knows(world):
    ps = world.prompts("train")
    rng = np.random.default_rng(0)
    half = WriterSpec(name="half", quality=1.0, knowledge=0.5, knowledge_rate=0.9)
    known = world.known_families(half)
    assert len(known) == 4 and known == world.known_families(half)  # fixed by seed and name
    others = {frozenset(world.known_families(half.model_copy(update={"name": f"w{i}"}))) for i in range(6)}
    assert len(others) > 1  # drawn per writer name
    answers = world.write(half, ps, 2, rng)
    for p, row in zip(ps, answers):
        fam = world.parse_prompt(p)[0]
        know = {t for a in row for t in a.split() if t.startswith("k")}
        assert know <= set(world.knowledge[fam])  # never another family's tokens
        if fam not in known:
            assert not know
    emitted = {t for t in _tokens(answers) if t.startswith("k")}
    assert {world._knowledge_family[t] for t in emitted} == known
    # a writer that knows nothing (the default, like the SFT corpora) never emits a knowledge token
    none = world.write(WriterSpec(name="none", quality=1.0), ps, 2, rng)
    assert not [t for t in _tokens(none) if t.startswith("k")]
    # the SFT corpora know nothing by default: a policy trained on them never sees the tokens
    for spec in world.cfg.policies.values():
        assert world.known_families(spec.corpus) == set()


def test_knowledge_rate_sets_how_often_a_known_token_is_inserted(world):
    ps = world.prompts("train")
    w = WriterSpec(name="all", quality=1.0, knowledge=1.0, knowledge_rate=0.5)
    answers = world.write(w, ps, 4, np.random.default_rng(1))
    per_token = np.mean([a.split().count(world.knowledge[world.parse_prompt(p)[0]][0])
                         for p, row in zip(ps, answers) for a in row])
    assert 0.4 < per_token < 0.6


def test_reward_rises_by_kappa_per_right_token_and_falls_by_the_penalty_per_wrong_one(world):
    c = world.cfg
    p = world.prompts("train")[0]
    fam = world.parse_prompt(p)[0]
    other = (fam + 1) % c.n_families
    base = "w1 w2 w3 w4 w5"
    r0 = world.reward(p, base + " w6")
    # same length (6 tokens), one content word swapped for a right knowledge token
    u = world.utilities(p)
    assert world.reward(p, base + f" {world.knowledge[fam][0]}") == pytest.approx(
        r0 + c.kappa - u[world.words.index("w6")] / c.target_len)
    right2 = f"{base} {world.knowledge[fam][0]} {world.knowledge[fam][1]}"
    right1 = f"{base} {world.knowledge[fam][0]}"
    wrong = f"{base} {world.knowledge[fam][0]} {world.knowledge[other][0]}"
    assert world.reward(p, right2) - world.reward(p, right1) == pytest.approx(c.kappa - c.length_penalty)
    assert world.reward(p, wrong) - world.reward(p, right1) == pytest.approx(
        -c.wrong_knowledge_penalty - c.length_penalty)
    # once per distinct token: a repeat earns nothing and costs a repeat
    rep = f"{base} {world.knowledge[fam][0]} {world.knowledge[fam][0]}"
    assert world.reward(p, rep) - world.reward(p, right1) == pytest.approx(-c.repeat_penalty - c.length_penalty)
    # knowledge tokens are not invalid tokens, but a stranger is
    assert world.decompose(p, right1)["invalid"] == 0.0
    assert world.decompose(p, base + " k99_0")["invalid"] == -c.invalid_penalty
    # without the knob the same string is a non-word
    plain = World(WorldConfig(scale="small"))
    assert plain.decompose(p, right1)["invalid"] == -plain.cfg.invalid_penalty


def test_decomposition_sums_to_the_reward(world):
    ps = world.prompts("train")[:60]
    rng = np.random.default_rng(2)
    w = WriterSpec(name="mix", quality=1.5, knowledge=0.5, repeat_rate=0.2, phrase_rate=0.5)
    answers = [a[0] for a in world.write(w, ps, 1, rng)]
    fam = world.parse_prompt(ps[0])[0]
    answers += ["", "<unk> w1 w1", f"k{(fam + 1) % 8}_0 k{fam}_2 k{fam}_2 w4"]
    ps = ps + [ps[0]] * 3
    for p, a in zip(ps, answers):
        d = world.decompose(p, a)
        assert set(d) == {"utility", "phrase", "repetition", "length", "invalid", "knowledge", "wrong_knowledge"}
        assert sum(d.values()) == pytest.approx(world.reward(p, a), abs=1e-12)
    default = World(WorldConfig(scale="small"))
    p = default.prompts("train")[0]
    for a in ("w1 w2 w3", default.best_answer(p)[0], "w5 w5 <unk>"):
        assert sum(default.decompose(p, a).values()) == pytest.approx(default.reward(p, a), abs=1e-12)


def test_best_answer_uses_the_knowledge_when_it_pays(world):
    p = world.prompts("train")[0]
    best, r = world.best_answer(p)
    assert set(world.knowledge[world.parse_prompt(p)[0]]) <= set(best.split())
    assert r == pytest.approx(world.reward(p, best))


def test_length_balanced_pool_gives_every_writer_one_length_distribution():
    cfg = WorldConfig(**KNOB, pool_length_balanced=True)
    cfg = cfg.model_copy(update={"pool": [w.model_copy(update={"knowledge": 1.0}) if w.name == "pool-d" else w
                                          for w in cfg.pool]})
    world = World(cfg)
    ps = world.prompts("train")
    rng = np.random.default_rng(3)
    means = {w.name: np.mean([len(a.split()) for row in world.write(w, ps, 4, rng) for a in row]) for w in cfg.pool}
    assert max(means.values()) - min(means.values()) < 0.3, means
    # the knowing writer still carries its knowledge inside the shared length
    d_answers = world.write(cfg.pool[-1], ps[:50], 1, rng)
    assert any(t.startswith("k") for t in _tokens(d_answers))
    unbalanced = World(cfg.model_copy(update={"pool_length_balanced": False}))
    means_u = {w.name: np.mean([len(a.split()) for row in unbalanced.write(w, ps, 4, rng) for a in row])
               for w in cfg.pool}
    assert max(means_u.values()) - min(means_u.values()) > 2.0  # the default pool differs in length
    # only pool writers are balanced: an SFT corpus keeps its own length
    weak = cfg.policies["weak"].corpus
    assert np.mean([len(a.split()) for row in world.write(weak, ps, 2, rng) for a in row]) > 7.0


def test_repeat_rate_makes_repeats_appear():
    world = World(WorldConfig(scale="small"))
    ps = world.prompts("train")[:100]
    rng = np.random.default_rng(4)

    def repeats(w):
        return sum(len(a.split()) - len(set(a.split())) for row in world.write(w, ps, 1, rng) for a in row)

    assert repeats(WriterSpec(name="x", quality=1.0)) == 0
    assert repeats(WriterSpec(name="x", quality=1.0, repeat_rate=0.3)) > 50
    dec = [world.decompose(p, a[0]) for p, a in
           zip(ps, world.write(WriterSpec(name="x", quality=1.0, repeat_rate=0.3), ps, 1, rng))]
    assert np.mean([d["repetition"] for d in dec]) < 0


def test_knob_fields_enter_the_fingerprint_only_away_from_their_defaults():
    base = WorldConfig(scale="small")
    assert base.model_copy(update={"pool_length_balanced": True}).fingerprint() == base.fingerprint()
    assert WorldConfig(scale="small", wrong_knowledge_penalty=0.5).fingerprint() == base.fingerprint()
    assert WorldConfig(scale="small", knowledge_tokens=2).fingerprint() != base.fingerprint()
    # the price of knowledge shapes no corpus: a kappa sweep trains its initial policies once
    two = WorldConfig(scale="small", knowledge_tokens=2)
    assert two.model_copy(update={"kappa": 0.3, "wrong_knowledge_penalty": 1.0}).fingerprint() == two.fingerprint()
    weak = base.policies["weak"]
    knowing = weak.model_copy(update={"corpus": weak.corpus.model_copy(update={"knowledge": 0.5})})
    changed = base.model_copy(update={"policies": {**base.policies, "weak": knowing}})
    assert changed.fingerprint() != base.fingerprint()
    with pytest.raises(ValueError):
        WorldConfig(knowledge_tokens=10)  # must leave room in an answer
    with pytest.raises(ValueError):
        WriterSpec(name="x", quality=1.0, knowledge=1.5)


def test_world_show_prints_the_decomposition_per_writer():
    cfg = WorldConfig(**KNOB)
    cfg = cfg.model_copy(update={"pool": [w.model_copy(update={"knowledge": 1.0}) if w.name == "pool-d" else w
                                          for w in cfg.pool]})
    text = describe(cfg, n_prompts=40)
    assert "mean r* decomposition per writer" in text and "knowledge" in text
    row = next(line for line in text.splitlines() if line.startswith("pool pool-d") and "8/8" in line)
    assert float(row.split()[-4]) > 0  # the knowledge column (then wrong_knowledge, length, known)
