"""Data strategies: which source the next iteration trains on."""

from __future__ import annotations

import pytest

from stagealign.schedule import Choice, blend_share, choose, parse_path


def test_parse_path_accepts_aliases():
    assert parse_path("off,on") == ["static", "onpolicy"]
    assert parse_path(" Static , on-policy,ONPOLICY,off ") == [
        "static",
        "onpolicy",
        "onpolicy",
        "static",
    ]
    assert parse_path(["on", "off"]) == ["onpolicy", "static"]


@pytest.mark.parametrize("bad", ["off,of", "off,maybe", "offf"])
def test_parse_path_bad_token_is_named(bad):
    token = bad.split(",")[-1]
    with pytest.raises(ValueError, match=repr(token)):
        parse_path(bad)


def test_parse_path_empty():
    with pytest.raises(ValueError, match="empty"):
        parse_path("")
    with pytest.raises(ValueError, match="position 2"):
        parse_path("off,,on")


def test_fixed_kinds_ignore_the_measurement():
    for decision in ("injection", "fine-tuning", "uncertain", None):
        c = choose("static", 3, decision, 0.9, None)
        assert c == Choice("static", 0.0, "fixed schedule 'static'")
        c = choose("onpolicy", 1, decision, 0.1, None)
        assert (c.source, c.onpolicy_share) == ("onpolicy", 1.0)


def test_path_kind_follows_steps_and_errors_when_too_short():
    got = [choose("path", k, None, None, None, path="off,on").source for k in (1, 2)]
    assert got == ["static", "onpolicy"]
    with pytest.raises(ValueError, match="2 step.*iteration 3"):
        choose("path", 3, None, None, None, path="off,on")
    with pytest.raises(ValueError, match="needs a path"):
        choose("path", 1, None, None, None)


def test_auto_follows_decision():
    c = choose("auto", 1, "injection", 0.40, None)
    assert (c.source, c.onpolicy_share) == ("static", 0.0)
    c = choose("auto", 2, "fine-tuning", 0.66, c)
    assert (c.source, c.onpolicy_share) == ("onpolicy", 1.0)
    assert "fine-tuning" in c.reason and "0.660" in c.reason


def test_auto_uncertain_keeps_previous():
    prev_on = Choice("onpolicy", 1.0, "x")
    prev_off = Choice("static", 0.0, "x")
    assert choose("auto", 3, "uncertain", 0.51, prev_on).source == "onpolicy"
    assert choose("auto", 3, "uncertain", 0.49, prev_off).source == "static"
    kept = choose("auto", 3, "uncertain", 0.5, Choice("blend", 0.3, "x"))
    assert (kept.source, kept.onpolicy_share) == ("blend", 0.3)
    assert "keeping previous" in kept.reason


def test_auto_first_iteration_and_unmeasured_use_first():
    assert choose("auto", 1, "uncertain", 0.5, None).source == "static"
    assert choose("auto", 1, "uncertain", 0.5, None, first="on").source == "onpolicy"
    # not measured: `first`, even when a previous choice exists
    prev = Choice("static", 0.0, "x")
    assert choose("auto", 2, None, None, prev, first="onpolicy").source == "onpolicy"


def test_blend_share_ramp_and_clipping():
    assert blend_share(0.5, 0.5, 0.2) == pytest.approx(0.5)
    assert blend_share(0.55, 0.5, 0.2) == pytest.approx(0.75)
    assert blend_share(0.45, 0.5, 0.2) == pytest.approx(0.25)
    assert blend_share(0.60, 0.5, 0.2) == pytest.approx(1.0)
    assert blend_share(0.40, 0.5, 0.2) == pytest.approx(0.0)
    assert blend_share(0.95, 0.5, 0.2) == 1.0
    assert blend_share(0.05, 0.5, 0.2) == 0.0
    assert blend_share(0.7, 0.6, 0.4) == pytest.approx(0.75)
    with pytest.raises(ValueError):
        blend_share(0.5, 0.5, 0.0)


def test_blend_kind_sources():
    mid = choose("blend", 1, "uncertain", 0.53, None)
    assert mid.source == "blend" and mid.onpolicy_share == pytest.approx(0.65)
    assert choose("blend", 1, "fine-tuning", 0.9, None) == Choice(
        "onpolicy", 1.0, choose("blend", 1, "fine-tuning", 0.9, None).reason
    )
    assert choose("blend", 1, "injection", 0.1, None).source == "static"
    # exactly at the ramp's end is a pure source, not a degenerate blend
    end = choose("blend", 1, None, 0.7, None, threshold=0.5, blend_width=0.4)
    assert (end.source, end.onpolicy_share) == ("onpolicy", 1.0)
    assert choose("blend", 1, None, None, None, first="on").source == "onpolicy"


def test_choice_validates_consistency():
    with pytest.raises(ValueError):
        Choice("static", 0.5, "")
    with pytest.raises(ValueError):
        Choice("blend", 1.0, "")
    with pytest.raises(ValueError):
        Choice("mixed", 0.5, "")  # type: ignore[arg-type]


def test_choose_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown schedule kind"):
        choose("greedy", 1, None, None, None)
    with pytest.raises(ValueError, match="1-based"):
        choose("static", 0, None, None, None)
    with pytest.raises(ValueError, match="unknown decision"):
        choose("auto", 1, "finetuning", 0.6, None)
    with pytest.raises(ValueError, match="first"):
        choose("auto", 1, None, None, None, first="sometimes")
