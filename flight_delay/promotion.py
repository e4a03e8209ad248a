"""The offline promotion gate: when a newly trained model replaces the champion.

A pure function of the two models' figures on the same evaluation window, so the pipeline's
``model_promotion`` asset, the tests and the closed loop apply one rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class PromotionPolicy:
    """The candidate's AUC must beat the champion's by more than ``min_auc_gain``, and its log loss
    may be worse by at most ``max_log_loss_increase``."""

    min_auc_gain: float = 0.0
    max_log_loss_increase: float = 0.01


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    reason: str


def decide_promotion(
    candidate_tag: str,
    candidate: Mapping[str, float],
    champion_tag: str | None,
    champion: Mapping[str, float] | None,
    policy: PromotionPolicy = PromotionPolicy(),
) -> PromotionDecision:
    """Whether ``candidate`` replaces ``champion``; both map ``auc`` and ``log_loss`` measured on
    the same window (``champion`` is ignored when there is no champion or it is the candidate)."""
    if champion_tag is None:
        return PromotionDecision(True, "no champion yet")
    if champion_tag == candidate_tag:
        return PromotionDecision(False, "candidate is already the champion")
    if champion is None:
        raise ValueError(f"the champion {champion_tag} has no figures to compare the candidate with")
    gain = candidate["auc"] - champion["auc"]
    worse_loss = candidate["log_loss"] - champion["log_loss"]
    promote = gain > policy.min_auc_gain and worse_loss <= policy.max_log_loss_increase
    reason = (
        f"AUC {candidate['auc']:.4f} vs champion {champion['auc']:.4f} (gain {gain:+.4f}, needs > "
        f"{policy.min_auc_gain}); log loss {candidate['log_loss']:.4f} vs {champion['log_loss']:.4f} "
        f"(may be worse by at most {policy.max_log_loss_increase})"
    )
    return PromotionDecision(promote, reason)
