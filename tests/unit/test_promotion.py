"""The offline promotion gate as a plain function."""

import pytest

from flight_delay.promotion import PromotionPolicy, decide_promotion

CHAMPION = {"auc": 0.750, "log_loss": 0.450}


def test_no_champion_promotes_the_first_model():
    decision = decide_promotion("m:1", {"auc": 0.6, "log_loss": 0.6}, None, None)
    assert decision.promote and decision.reason == "no champion yet"


def test_the_champion_is_not_promoted_over_itself():
    decision = decide_promotion("m:1", CHAMPION, "m:1", CHAMPION)
    assert not decision.promote and "already the champion" in decision.reason


@pytest.mark.parametrize(
    ("candidate", "promote"),
    [
        ({"auc": 0.760, "log_loss": 0.440}, True),  # better on both
        ({"auc": 0.760, "log_loss": 0.459}, True),  # higher AUC, log loss worse within 0.01
        ({"auc": 0.760, "log_loss": 0.461}, False),  # higher AUC, log loss worse beyond 0.01
        ({"auc": 0.750, "log_loss": 0.400}, False),  # equal AUC is not a gain
        ({"auc": 0.740, "log_loss": 0.400}, False),  # lower AUC
    ],
)
def test_default_policy(candidate, promote):
    assert decide_promotion("m:2", candidate, "m:1", CHAMPION).promote is promote


def test_min_auc_gain_raises_the_bar():
    candidate = {"auc": 0.755, "log_loss": 0.45}
    assert decide_promotion("m:2", candidate, "m:1", CHAMPION).promote
    assert not decide_promotion("m:2", candidate, "m:1", CHAMPION, PromotionPolicy(min_auc_gain=0.01)).promote


def test_the_reason_gives_both_figures():
    reason = decide_promotion("m:2", {"auc": 0.7612, "log_loss": 0.4401}, "m:1", CHAMPION).reason
    assert "0.7612" in reason and "0.7500" in reason and "0.4401" in reason and "0.4500" in reason


def test_a_champion_without_figures_is_an_error():
    with pytest.raises(ValueError, match="no figures"):
        decide_promotion("m:2", CHAMPION, "m:1", None)
