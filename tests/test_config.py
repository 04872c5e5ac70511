import pytest

from stagealign.config import ConfigError, RunConfig, dump_config, load_config


def test_unknown_key_names_key_and_suggests(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("training:\n  betta: 0.2\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    msg = str(e.value)
    assert str(f) in msg and "training.betta" in msg and "did you mean 'beta'" in msg


def test_wrong_type_names_field(tmp_path):
    with pytest.raises(ConfigError, match=r"training\.learning_rate"):
        load_config(None, ["training.learning_rate=fast"])


def test_overrides_parse_yaml_values_and_nest():
    cfg = load_config(None, ["training.beta=0.25", "schedule.kind=path", "schedule.path=off,on",
                             "report_to=tensorboard"])
    assert cfg.training.beta == 0.25 and cfg.schedule.path == "off,on" and cfg.report_to == "tensorboard"


def test_yaml_then_override_wins(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("seed: 3\ntraining:\n  method: slic-hf\n")
    cfg = load_config(f, ["seed=4"])
    assert cfg.seed == 4 and cfg.training.method == "slic-hf"


def test_path_schedule_must_cover_iterations():
    with pytest.raises(ConfigError, match="2 steps but iterations=3"):
        load_config(None, ["iterations=3", "schedule.kind=path", "schedule.path=off,on"])
    with pytest.raises(ConfigError, match="bogus"):
        load_config(None, ["schedule.kind=path", "schedule.path=off,bogus"])


def test_policy_needs_exactly_one_source():
    with pytest.raises(ConfigError, match="exactly one"):
        load_config(None, ["policy.testbed=weak", "policy.model=gpt2"])
    with pytest.raises(ConfigError, match="exactly one"):
        load_config(None, ["policy.testbed=null"])
    with pytest.raises(ConfigError, match="needs a static pool"):
        load_config(None, ["policy.model=gpt2"])


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(lst)


def test_dump_round_trips(tmp_path):
    cfg = load_config(None, ["training.method=ipo", "seed=7"])
    f = tmp_path / "c.yaml"
    f.write_text(dump_config(cfg))
    assert load_config(f) == cfg
    assert isinstance(cfg, RunConfig)


def test_on_off_stay_strings_but_true_false_are_booleans(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("iterations: 1\nschedule:\n  kind: path\n  path: on\nboundary:\n  sequential: false\n")
    cfg = load_config(f)
    assert cfg.schedule.path == "on" and cfg.boundary.sequential is False


def test_overrides_into_dict_and_list_fields_keep_the_other_defaults():
    cfg = load_config(None, ["world.policies.weak.examples=100", "world.pool.0.quality=0.7"])
    default = RunConfig()
    assert cfg.world.policies["weak"].examples == 100
    assert cfg.world.policies["weak"].corpus == default.world.policies["weak"].corpus
    assert set(cfg.world.policies) == set(default.world.policies)
    assert cfg.world.pool[0].quality == 0.7 and cfg.world.pool[1:] == default.world.pool[1:]
    with pytest.raises(ConfigError, match="not an index"):
        load_config(None, ["world.pool.9.quality=0.7"])
