"""Training set from the feature service, the trained model in the registry, the promotion."""

import json
import os
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import dagster as dg
import pandas as pd
from pydantic import Field

from features import FLIGHT_DELAY_SERVICE
from features.retrieval import historical_features
from flight_delay import feature_tables, schemas, sequential
from flight_delay.evaluation import classification_metrics
from flight_delay.flights import LOCAL_TZ
from flight_delay.forward import ServingModel
from flight_delay.loop import HOLD_OUT_FLIGHTS, HOLD_OUT_TEST, LOOP_CONFIG_ENV, LoopConfig, hold_out_test
from flight_delay.model import FLIGHT_DELAY_FEATURES, MODEL_NAME, TrainingConfig
from flight_delay.promotion import PromotionPolicy, decide_promotion
from flight_delay.registry import ConflictError, fold
from flight_delay.training import SUMMARY_METRICS, evaluation_rows, fingerprint, train_and_evaluate
from pipeline.checks import check_result, schema_check_spec
from pipeline.partitions import days_between
from pipeline.resources import FeatureStoreResource, ModelRegistryResource, TableStore
from pipeline.step_resources import step_op_tags

GROUP = "training"
LOOP_TAG_PREFIX = "flight_delay/"  # run tags set by the loop's sensors (pipeline/sensors.py)


class TrainingWindowConfig(dg.Config):
    """Which days train the model, which evaluate it, and how early it predicts."""

    train_start: str = Field(default="2013-01-01", description="First day of training (YYYY-MM-DD).")
    train_end: str = Field(default="2013-09-30", description="Last day of training.")
    evaluation_start: str = Field(default="2013-10-01", description="First day of evaluation.")
    evaluation_end: str = Field(default="2013-12-31", description="Last day of evaluation.")
    horizon_minutes: int = Field(default=60, gt=0, description="Prediction time before scheduled departure.")


class ModelTrainingConfig(dg.Config):
    """Hyper-parameters of the network (the baseline shares the preprocessing)."""

    hidden_units: list[int] = Field(default=[128, 64], description="Units of each hidden layer.")
    dropout: float = Field(default=0.1, ge=0, lt=1)
    learning_rate: float = Field(default=1e-3, gt=0)
    batch_size: int = Field(default=1024, gt=0)
    max_epochs: int = Field(default=20, gt=0, description="Upper bound; early stopping ends sooner.")
    patience: int = Field(default=3, gt=0, description="Epochs without validation AUC gain before stopping.")
    validation_fraction: float = Field(default=0.1, gt=0, lt=0.5, description="Latest share of training rows held out.")
    seed: int = Field(default=13)

    def to_params(self) -> TrainingConfig:
        return TrainingConfig(**{**self.model_dump(), "hidden_units": tuple(self.hidden_units)})


class PromotionConfig(dg.Config):
    """When a candidate replaces the champion (flight_delay.promotion.PromotionPolicy)."""

    min_auc_gain: float = Field(default=0.0, description="Candidate AUC must exceed the champion's by more than this.")
    max_log_loss_increase: float = Field(default=0.01, description="And its log loss may be worse by at most this.")


@dg.asset(
    group_name=GROUP,
    op_tags=step_op_tags(GROUP),
    deps=["departures", "feature_registry"],
    kinds={"feast", "pandas"},
    check_specs=[schema_check_spec("training_set", "One row per flight, 0/1 label, prediction before departure.")],
)
def training_set(
    config: TrainingWindowConfig, feature_store: FeatureStoreResource, lake: TableStore
) -> Iterator[dg.Output | dg.AssetCheckResult]:
    """Labelled prediction requests joined point-in-time to the flight_delay_v1 feature service."""
    departures = lake.read("departures", days_between(config.train_start, config.evaluation_end))
    requests = feature_tables.prediction_requests(departures, pd.Timedelta(minutes=config.horizon_minutes))
    joined = historical_features(feature_store.store(), requests, FLIGHT_DELAY_SERVICE)
    frame = feature_tables.request_time_features(joined, joined["event_timestamp"])
    local_day = frame["sched_dep_ts"].dt.tz_convert(LOCAL_TZ).dt.strftime("%Y-%m-%d")
    frame["split"] = (local_day >= config.evaluation_start).map({True: "evaluation", False: "train"})
    frame = frame.sort_values(["event_timestamp", "flight_id"], kind="stable").reset_index(drop=True)
    counts = frame["split"].value_counts().to_dict()
    yield dg.Output(
        frame,
        metadata={
            "rows": len(frame),
            "train_rows": int(counts.get("train", 0)),
            "evaluation_rows": int(counts.get("evaluation", 0)),
            "late_rate": float(frame["is_late"].mean()),
            "feature_service": FLIGHT_DELAY_SERVICE,
            "fingerprint": fingerprint(frame),
        },
    )
    schema = schemas.training_set_schema(list(FLIGHT_DELAY_FEATURES.columns))
    yield check_result("training_set", schemas.validate(schema, frame))


@dg.asset(
    group_name=GROUP,
    op_tags=step_op_tags(GROUP),
    io_manager_key="artifact_io_manager",
    kinds={"tensorflow", "bentoml"},
)
def delay_model(
    context: dg.AssetExecutionContext,
    config: ModelTrainingConfig,
    training_set: pd.DataFrame,
    model_registry: ModelRegistryResource,
) -> dg.Output[dict[str, Any]]:
    """TensorFlow delay classifier, evaluated beside a logistic baseline and registered in BentoML."""
    try:
        outcome = train_and_evaluate(training_set, config.to_params())
    except ValueError as exc:
        raise dg.Failure(str(exc)) from exc
    lineage = {
        "dagster_run_id": context.run.run_id,
        "training_set_fingerprint": fingerprint(training_set),
        "code_version": context.assets_def.code_versions_by_key.get(context.asset_key) or "unversioned",
    }
    tag = model_registry.registry().register(
        MODEL_NAME, outcome.export, outcome.labels(FLIGHT_DELAY_SERVICE), outcome.metadata(lineage)
    )
    summary = {k: outcome.metrics[k] for k in SUMMARY_METRICS}
    summary |= {f"baseline_{k}": outcome.baseline_metrics[k] for k in SUMMARY_METRICS}
    return dg.Output(
        {"tag": tag, "metrics": outcome.metrics, "baseline_metrics": outcome.baseline_metrics},
        metadata={
            "model_tag": tag,
            **{k: dg.MetadataValue.float(v) for k, v in summary.items()},
            "expected_calibration_error": dg.MetadataValue.float(outcome.ece),
            "calibration": dg.MetadataValue.md(outcome.calibration.round(4).to_markdown(index=False)),
            "best_epoch": outcome.network.best_epoch,
            "training_seconds": dg.MetadataValue.float(round(outcome.seconds, 1)),
            "train_rows": outcome.train_rows,
            "evaluation_rows": outcome.evaluation_rows,
        },
    )


@dg.asset(group_name=GROUP, op_tags=step_op_tags(GROUP), kinds={"bentoml"})
def model_promotion(
    context: dg.AssetExecutionContext,
    config: PromotionConfig,
    delay_model: dict[str, Any],
    training_set: pd.DataFrame,
    model_registry: ModelRegistryResource,
) -> dg.MaterializeResult:
    """Offline gate: a candidate that beats the champion on the same window becomes its shadow challenger
    (the first model becomes champion); one that does not is rejected."""
    registry = model_registry.registry()
    candidate, cand = delay_model["tag"], delay_model["metrics"]
    champion = registry.champion(MODEL_NAME)
    champ = None
    if champion is not None and champion != candidate:
        held_out, y = evaluation_rows(training_set)
        champion_p = ServingModel(registry.model_dir(champion)).predict(held_out)
        champ = classification_metrics(y, champion_p)
    decision = decide_promotion(candidate, cand, champion, champ, PromotionPolicy(**config.model_dump()))
    # The run that decided, and the drift that asked for it (the drift sensor's run tags), go into
    # the registry's event and the metadata alike.
    trigger = {k: v for k, v in context.run.tags.items() if k.startswith(LOOP_TAG_PREFIX)}
    details: dict[str, Any] = {"dagster_run_id": context.run.run_id, **({"trigger": trigger} if trigger else {})}
    opening, opening_evidence = None, 1.0
    if decision.promote and champion is not None:
        # The challenger sensor's test opens on the hold-out's paired losses when the champion
        # never learned from those flights (flight_delay.loop.hold_out_test says why that is valid).
        policy = LoopConfig.load(os.environ.get(LOOP_CONFIG_ENV)).challenger
        evaluation_start = held_out["sched_dep_ts"].min()
        opening, why = hold_out_test(
            champion_p,
            ServingModel(registry.model_dir(candidate)).predict(held_out),
            y,
            registry.get(champion).info.labels.get("train_window"),
            f"{evaluation_start.tz_convert(LOCAL_TZ):%Y-%m-%d}",
            policy,
        )
        context.log.info(f"challenger test: {why}")
        if opening is not None:
            details |= {HOLD_OUT_TEST: opening.to_json(), HOLD_OUT_FLIGHTS: len(y)}
            opening_evidence = sequential.decide(opening, policy.test_config()).evidence_better
    try:
        if decision.promote and champion is None:
            action = "promote"  # the very first model: nothing to prove itself against live
            registry.promote(MODEL_NAME, candidate, decision.reason, expected_champion=None, details=details)
        elif decision.promote:
            # Passing the offline gate earns a place beside the champion, not the champion's place:
            # the challenger sensor promotes it once its live record proves it better.
            action = "challenge"
            registry.challenge(
                MODEL_NAME,
                candidate,
                "shadow",
                1.0,
                f"passed the offline gate: {decision.reason}",
                champion,
                details=details,
            )
        else:
            action = "keep"
            if candidate != champion:
                registry.reject(MODEL_NAME, candidate, decision.reason, details=details)  # never takes traffic unasked
    except ConflictError as exc:
        raise dg.Failure(f"{exc}; materialize model_promotion again to judge the candidate against it") from exc
    context.log.info(f"{action}: {decision.reason}")
    if action != "keep":  # the model's life in one place: model_decisions' history shows this decision too
        figures = {"candidate_auc": cand["auc"], "candidate_log_loss": cand["log_loss"]}
        if champ is not None:
            figures |= {"champion_auc": champ["auc"], "champion_log_loss": champ["log_loss"]}
        if opening is not None:
            figures |= {"hold_out_flights": len(y), "hold_out_evidence_better": opening_evidence}
        context.log_event(
            dg.AssetMaterialization(
                asset_key="model_decisions",
                description=f"{action} {candidate} (model_promotion's offline gate)",
                metadata={
                    "action": action,
                    "model_version": candidate,
                    "champion_before": champion or "none",
                    "reason": decision.reason,
                    "dagster_run_id": context.run.run_id,
                    "figures": dg.MetadataValue.json(figures),
                    **{k: dg.MetadataValue.float(float(v)) for k, v in figures.items()},
                },
            )
        )
    events = registry.history(MODEL_NAME)
    state = fold(events)
    history = pd.DataFrame([asdict(e) for e in events]).tail(10)
    metadata: dict[str, Any] = {
        "decision": action,
        "reason": decision.reason,
        "candidate": candidate,
        "champion_before": champion or "none",
        "champion_after": state.champion or "none",
        "state_after": dg.MetadataValue.json(json.loads(state.to_json())),
        "candidate_auc": dg.MetadataValue.float(cand["auc"]),
        "champion_history": dg.MetadataValue.md(history.to_markdown(index=False)),
    }
    if champ is not None:
        metadata["champion_auc"] = dg.MetadataValue.float(champ["auc"])
    metadata |= {f"trigger/{k.removeprefix(LOOP_TAG_PREFIX)}": v for k, v in trigger.items()}
    return dg.MaterializeResult(metadata=metadata)
