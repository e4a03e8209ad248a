"""Training set from the feature service, the trained model in the registry, the promotion."""


import hashlib
import time
from collections.abc import Iterator
from typing import Any

import dagster as dg
import pandas as pd
from pydantic import Field

import features as repo
from flight_delay import features as F
from flight_delay import metrics as M
from flight_delay import model as model_lib
from flight_delay import schemas
from pipeline.checks import check_result, schema_check_spec
from pipeline.resources import FeatureStoreResource, ModelRegistryResource, TableStore

GROUP = "training"
MODEL_NAME = "flight_delay"


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


class PromotionConfig(dg.Config):
    """When a candidate replaces the champion."""

    min_auc_gain: float = Field(default=0.0, description="Candidate AUC must exceed the champion's by more than this.")
    max_log_loss_increase: float = Field(default=0.01, description="And its log loss may be worse by at most this.")


def _days(start: str, end: str) -> list[str]:
    return [d.strftime("%Y-%m-%d") for d in pd.date_range(start, end, freq="D")]


def _fingerprint(frame: pd.DataFrame) -> str:
    return hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes()).hexdigest()[:16]


@dg.asset(
    group_name=GROUP, deps=["departures", "feature_registry"], kinds={"feast", "pandas"},
    check_specs=[schema_check_spec("training_set", "One row per flight, 0/1 label, prediction before departure.")],
)
def training_set(
    context: dg.AssetExecutionContext, config: TrainingWindowConfig,
    feature_store: FeatureStoreResource, lake: TableStore,
) -> Iterator[dg.Output | dg.AssetCheckResult]:
    """Labelled prediction requests joined point-in-time to the flight_delay_v1 feature service."""
    days = _days(config.train_start, config.evaluation_end)
    requests = F.prediction_requests(lake.read("departures", days), pd.Timedelta(minutes=config.horizon_minutes))
    store = feature_store.store()
    service = store.get_feature_service(repo.FLIGHT_DELAY_SERVICE)
    month = requests["sched_dep_ts"].dt.tz_convert(F.LOCAL_TZ).dt.strftime("%Y-%m")
    # One month of requests per retrieval keeps the point-in-time join's memory bounded.
    parts = [
        store.get_historical_features(entity_df=chunk.drop(columns=["sched_dep_ts"]).assign(
            sched_dep_unix=chunk["sched_dep_ts"].astype("int64")), features=service).to_df()
        for _, chunk in requests.groupby(month)
    ]
    joined = pd.concat(parts, ignore_index=True)
    joined["event_timestamp"] = pd.to_datetime(joined["event_timestamp"], utc=True).astype("datetime64[ns, UTC]")
    joined["sched_dep_ts"] = pd.to_datetime(joined.pop("sched_dep_unix"), utc=True).astype("datetime64[ns, UTC]")
    frame = F.request_time_features(joined, joined["event_timestamp"])
    local_day = frame["sched_dep_ts"].dt.tz_convert(F.LOCAL_TZ).dt.strftime("%Y-%m-%d")
    frame["split"] = (local_day >= config.evaluation_start).map({True: "evaluation", False: "train"})
    frame = frame.sort_values(["event_timestamp", "flight_id"], kind="stable").reset_index(drop=True)
    counts = frame["split"].value_counts().to_dict()
    yield dg.Output(frame, metadata={
        "rows": len(frame),
        "train_rows": int(counts.get("train", 0)),
        "evaluation_rows": int(counts.get("evaluation", 0)),
        "late_rate": float(frame["is_late"].mean()),
        "feature_service": repo.FLIGHT_DELAY_SERVICE,
        "fingerprint": _fingerprint(frame),
    })
    schema = schemas.training_set_schema(list(model_lib.FLIGHT_DELAY_FEATURES.columns))
    yield check_result("training_set", schemas.validate(schema, frame))


def _local_window(ts: pd.Series) -> str:
    local = ts.dt.tz_convert(F.LOCAL_TZ)
    return f"{local.min():%Y-%m-%d}/{local.max():%Y-%m-%d}"


def _metric_metadata(prefix: str, values: dict[str, float]) -> dict[str, dg.MetadataValue]:
    return {f"{prefix}{k}": (dg.MetadataValue.int(v) if isinstance(v, int) else dg.MetadataValue.float(v))
            for k, v in values.items()}


@dg.asset(group_name=GROUP, io_manager_key="artifact_io_manager", kinds={"tensorflow", "bentoml"})
def delay_model(
    context: dg.AssetExecutionContext, config: ModelTrainingConfig,
    training_set: pd.DataFrame, model_registry: ModelRegistryResource,
) -> dg.Output[dict[str, Any]]:
    """TensorFlow delay classifier, evaluated beside a logistic baseline and registered in BentoML."""
    spec = model_lib.FLIGHT_DELAY_FEATURES
    train = training_set[training_set["split"] == "train"]
    held_out = training_set[training_set["split"] == "evaluation"]
    if held_out.empty:
        raise dg.Failure("the training set has no evaluation rows; set evaluation_start..evaluation_end inside the data")
    params = model_lib.TrainingConfig(
        hidden_units=tuple(config.hidden_units), dropout=config.dropout, learning_rate=config.learning_rate,
        batch_size=config.batch_size, max_epochs=config.max_epochs, patience=config.patience,
        validation_fraction=config.validation_fraction, seed=config.seed,
    )
    started = time.monotonic()
    network = model_lib.train(train, "is_late", spec, params)
    baseline = model_lib.train(train, "is_late", spec, params, linear=True)
    seconds = time.monotonic() - started
    y = held_out["is_late"].to_numpy()
    p = model_lib.predict(network, held_out)
    scores = M.classification_metrics(y, p)
    baseline_scores = M.classification_metrics(y, model_lib.predict(baseline, held_out))
    calibration = M.calibration_table(y, p)
    labels = {
        "feature_service": repo.FLIGHT_DELAY_SERVICE,
        "train_window": _local_window(train["sched_dep_ts"]),
        "evaluation_window": _local_window(held_out["sched_dep_ts"]),
        "horizon_minutes": str(int(round(
            (training_set["sched_dep_ts"] - training_set["event_timestamp"]).median().total_seconds() / 60))),
        "auc": f"{scores['auc']:.4f}",
    }
    metadata = {
        "metrics": scores, "baseline_metrics": baseline_scores, "ece": calibration.attrs["ece"],
        "calibration": calibration.to_dict(orient="records"),
        "feature_spec": spec.to_json(), "training_config": params.__dict__ | {"hidden_units": list(params.hidden_units)},
        "best_epoch": network.best_epoch, "epochs_run": len(network.history.get("loss", [])),
        "lineage": {
            "dagster_run_id": context.run.run_id,
            "training_set_fingerprint": _fingerprint(training_set),
            "train_rows": len(train), "evaluation_rows": len(held_out),
            "code_version": context.assets_def.code_versions_by_key.get(context.asset_key) or "unversioned",
        },
    }
    registry = model_registry.registry()
    tag = registry.register(MODEL_NAME, lambda path: model_lib.export(network, path), labels, metadata)
    value = {"tag": tag, "metrics": scores, "baseline_metrics": baseline_scores}
    return dg.Output(value, metadata={
        "model_tag": tag,
        **_metric_metadata("", {k: scores[k] for k in ("auc", "log_loss", "brier")}),
        **_metric_metadata("baseline_", {k: baseline_scores[k] for k in ("auc", "log_loss", "brier")}),
        "expected_calibration_error": dg.MetadataValue.float(calibration.attrs["ece"]),
        "calibration": dg.MetadataValue.md(calibration.round(4).to_markdown(index=False)),
        "best_epoch": network.best_epoch,
        "training_seconds": dg.MetadataValue.float(round(seconds, 1)),
        "train_rows": len(train), "evaluation_rows": len(held_out),
    })


@dg.asset(group_name=GROUP, kinds={"bentoml"})
def model_promotion(
    context: dg.AssetExecutionContext, config: PromotionConfig, delay_model: dict[str, Any],
    training_set: pd.DataFrame, model_registry: ModelRegistryResource,
) -> dg.MaterializeResult:
    """Champion/challenger decision: the candidate replaces the champion only if it beats it on the same window."""
    registry = model_registry.registry()
    candidate = delay_model["tag"]
    champion = registry.champion(MODEL_NAME)
    held_out = training_set[training_set["split"] == "evaluation"]
    y = held_out["is_late"].to_numpy()
    cand = delay_model["metrics"]
    if champion is None:
        promote, reason, champ = True, "no champion yet", None
    elif champion == candidate:
        promote, reason, champ = False, "candidate is already the champion", cand
    else:
        champ = M.classification_metrics(y, model_lib.ServingModel(registry.model_dir(champion)).predict(held_out))
        gain = cand["auc"] - champ["auc"]
        worse_loss = cand["log_loss"] - champ["log_loss"]
        promote = gain > config.min_auc_gain and worse_loss <= config.max_log_loss_increase
        reason = (f"AUC {cand['auc']:.4f} vs champion {champ['auc']:.4f} (gain {gain:+.4f}, needs > "
                  f"{config.min_auc_gain}); log loss {cand['log_loss']:.4f} vs {champ['log_loss']:.4f}")
    if promote:
        registry.promote(MODEL_NAME, candidate, reason)
    context.log.info(f"{'promoted' if promote else 'kept champion'}: {reason}")
    metadata: dict[str, Any] = {
        "decision": "promote" if promote else "keep",
        "reason": reason,
        "candidate": candidate,
        "champion_before": champion or "none",
        "champion_after": registry.champion(MODEL_NAME) or "none",
        "candidate_auc": dg.MetadataValue.float(cand["auc"]),
        "champion_history": dg.MetadataValue.md(pd.DataFrame(
            [e.__dict__ for e in registry.history(MODEL_NAME)]).tail(10).to_markdown(index=False)),
    }
    if champ is not None:
        metadata["champion_auc"] = dg.MetadataValue.float(champ["auc"])
    return dg.MaterializeResult(metadata=metadata)
