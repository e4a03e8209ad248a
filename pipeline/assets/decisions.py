"""A champion's life as materializations: each run of ``decision_job`` applies one decision about
which model serves (challenge, promote, retire, rollback, keep) to the registry, against the state
it was decided on (compare-and-set), and records it with its reason, the figures behind it and the
run that made it. The registry's event carries the same run id, so its history and the UI agree.

The loop's sensors (``pipeline/sensors.py``) request these runs through run config; a person can
launch one from the UI's launchpad the same way.
"""

import json
from typing import Any, Literal

import dagster as dg
from pydantic import Field

from flight_delay.model import MODEL_NAME
from flight_delay.registry import ChampionEvent, ConflictError, ModelRegistry, RegistryState
from pipeline.resources import ModelRegistryResource
from pipeline.step_resources import step_op_tags

GROUP = "model_lifecycle"
SHADOW_SHARE = 1.0  # a shadow challenger scores every flight


class DecisionConfig(dg.Config):
    """One decision about which model serves, and what it was decided against."""

    action: Literal["challenge", "promote", "retire", "rollback", "keep"] = Field(
        description="challenge: model_version becomes the shadow challenger; promote: the challenger "
        "model_version becomes champion (and the champion it replaces is scored in shadow, the rollback "
        "guard); retire: the challenger model_version is removed and barred; rollback: the previous "
        "champion model_version is restored; keep: the rollback guard model_version ends, the champion stays."
    )
    model_version: str = Field(description="The model the decision is about (name:version).")
    expected_champion: str = Field(
        default="", description="The champion the decision was made against ('' before the first); checked."
    )
    reason: str = Field(description="Why, in words (recorded in the registry and the metadata).")
    figures: str = Field(default="{}", description="JSON object: the figures behind the decision.")
    guard: bool = Field(default=True, description="promote: score the replaced champion in shadow afterwards.")


def _expect(state: RegistryState, config: DecisionConfig) -> None:
    if (state.champion or "") != config.expected_champion:
        raise ConflictError(MODEL_NAME, "champion", config.expected_champion or None, state.champion)


def apply_decision(registry: ModelRegistry, config: DecisionConfig, details: dict[str, Any]) -> list[ChampionEvent]:
    """The registry events of one decision (none for ``keep``), each checked against the state it
    was decided on; raises ConflictError when the registry moved since."""
    name, tag, reason, champion = MODEL_NAME, config.model_version, config.reason, config.expected_champion or None
    if config.action == "challenge":
        return [registry.challenge(name, tag, "shadow", SHADOW_SHARE, reason, champion, details=details)]
    if config.action == "promote":
        state = registry.state(name)
        _expect(state, config)
        actual = state.challenger.tag if state.challenger else None
        if actual != tag:
            raise ConflictError(name, "challenger", tag, actual)
        if config.guard:
            return registry.promote_guarded(name, tag, reason, champion, details=details)
        return [registry.promote(name, tag, reason, champion, details=details)]
    if config.action == "retire":
        _expect(registry.state(name), config)
        return [registry.retire(name, reason, expected_challenger=tag, details=details)]
    if config.action == "rollback":
        return [registry.rollback(name, reason, champion, to_tag=tag, details=details)]
    state = registry.state(name)  # keep: nothing changes; the state must still be the one judged
    _expect(state, config)
    actual = state.challenger.tag if state.challenger else None
    if actual != tag:
        raise ConflictError(name, "challenger", tag, actual)
    return []


def _figure_metadata(figures: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Numbers as plottable floats, one entry per figure (nested: ``feature/psi``)."""
    out: dict[str, Any] = {}
    for key, value in figures.items():
        if isinstance(value, dict):
            out |= _figure_metadata(value, f"{prefix}{key}/")
        elif isinstance(value, bool) or not isinstance(value, int | float):
            continue
        else:
            out[f"{prefix}{key}"] = dg.MetadataValue.float(float(value))
    return out


@dg.asset(group_name=GROUP, op_tags=step_op_tags(GROUP), kinds={"bentoml"}, deps=["model_promotion"])
def model_decisions(
    context: dg.AssetExecutionContext, config: DecisionConfig, model_registry: ModelRegistryResource
) -> dg.MaterializeResult:
    """A decision about which model serves (challenger started, promoted, retired, rolled back,
    kept), with its reason, figures and the run that made it."""
    try:
        figures = json.loads(config.figures)
    except json.JSONDecodeError as exc:
        raise dg.Failure(f"figures must be a JSON object; got {config.figures!r:.200} ({exc})") from exc
    if not isinstance(figures, dict):
        raise dg.Failure(f"figures must be a JSON object; got {config.figures!r:.200}")
    registry = model_registry.registry()
    run_id = context.run.run_id
    try:
        events = apply_decision(registry, config, {"dagster_run_id": run_id, "figures": figures})
    except ConflictError as exc:
        raise dg.Failure(
            f"{config.action} {config.model_version} not applied: {exc}. The sensor decides again on its next tick."
        ) from exc
    state = registry.state(MODEL_NAME)
    context.log.info(f"{config.action} {config.model_version}: {config.reason}")
    return dg.MaterializeResult(
        metadata={
            "action": config.action,
            "model_version": config.model_version,
            "champion_before": config.expected_champion or "none",
            "champion_after": state.champion or "none",
            "challenger_after": state.challenger.tag if state.challenger else "none",
            "reason": config.reason,
            "dagster_run_id": run_id,
            "registry_events": dg.MetadataValue.json([json.loads(e.to_json()) for e in events]),
            "figures": dg.MetadataValue.json(figures),
            **_figure_metadata(figures),
        }
    )
