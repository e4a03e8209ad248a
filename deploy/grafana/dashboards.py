"""The Grafana dashboards of the service and of its models, built with Grafana's own SDK
(grafana-foundation-sdk, Grafana 11.6 schema) and written as the JSON that Grafana provisions.

    python -m deploy.grafana.dashboards            # rewrite deploy/grafana/dashboards/*.json
    python -m deploy.grafana.dashboards --check    # exit 1 when the committed JSON is stale

Panel queries read the service's raw metrics (``serving/telemetry.py``), except drift and live
quality, which read the recording rules that ``deploy/prometheus/rules.py`` writes
(``flight_delay:feature_psi:1h``, ``flight_delay:live_log_loss:1h``, ...): one definition of drift
and live quality for the dashboards, the alerts and the monitoring asset.
Every panel points at the datasource variable, whose default is the provisioned Prometheus.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import heatmap, timeseries
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

HERE = Path(__file__).resolve().parent
DASHBOARD_DIR = HERE / "dashboards"
DATASOURCE_UID = "flight-delay-prometheus"  # provisioning/datasources/prometheus.yml
DATASOURCE_NAME = "Prometheus (flight delay)"
DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE = "$__rate_interval"
INSTANCE = 'instance=~"$instance"'
MODEL = f'model_version=~"$model_version", variant=~"$variant", {INSTANCE}'
PSI_WARN, PSI_ALERT = 0.1, 0.2  # PSI above 0.1: moderate shift; above 0.2: the drift alert's bound
# An annotation marks each new champion (a promotion or a rollback) for this long after it appears.
CHAMPION_CHANGE_WINDOW = "1m"


# -- building blocks --------------------------------------------------------------------------------
def query(expr: str, legend: str, ref_id: str = "A") -> Dataquery:
    return Dataquery().expr(expr).legend_format(legend).ref_id(ref_id).datasource(DATASOURCE).range()


def quantile_queries(q_values: tuple[float, ...], metric: str, by: str, selector: str, legend: str) -> list[Dataquery]:
    """``histogram_quantile`` of ``metric`` (a bucket counter) at each q, by ``by``."""
    return [
        query(
            f"histogram_quantile({q}, sum by ({by}, le) (rate({metric}{{{selector}}}[{RATE}])))",
            f"{legend} p{round(q * 100)}",
            chr(ord("A") + i),
        )
        for i, q in enumerate(q_values)
    ]


def panel(
    title: str, description: str, unit: str, targets: list[Dataquery], width: int = 12, height: int = 8
) -> timeseries.Panel:
    return (
        timeseries.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .datasource(DATASOURCE)
        .targets(targets)
        .grid_pos(model.GridPos(h=height, w=width))
        .legend(
            common_builders.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
    )


def dashed(name_regexp: str) -> tuple[str, list[model.DynamicConfigValue]]:
    """An override drawing the series whose name matches as a dashed reference line."""
    return name_regexp, [model.DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]})]


def datasource_variable() -> db.DatasourceVariable:
    return (
        db.DatasourceVariable("datasource")
        .label("Prometheus")
        .type("prometheus")
        .current(model.VariableOption(selected=True, text=DATASOURCE_NAME, value=DATASOURCE_UID))
    )


def label_variable(name: str, label: str, metric: str, multi: bool = True) -> db.QueryVariable:
    """Values of ``label`` on ``metric``; several may be chosen, "All" matches every value."""
    return (
        db.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query(f"label_values({metric}, {name})")
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
        .multi(multi)
        .include_all(True)
        .all_value(".*")
        .current(model.VariableOption(selected=True, text="All", value="$__all"))
    )


def base(uid: str, title: str, description: str) -> db.Dashboard:
    return (
        db.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["flight-delay"])
        .editable()
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("browser")
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
    )


def with_panels(
    dashboard: db.Dashboard, rows: list[tuple[str, list[timeseries.Panel | heatmap.Panel]]]
) -> db.Dashboard:
    """Rows of panels, numbered in order (Grafana needs ids unique in a dashboard)."""
    next_id = 1
    for row_title, panels in rows:
        dashboard = dashboard.with_row(db.Row(row_title).id(next_id))
        next_id += 1
        for p in panels:
            dashboard = dashboard.with_panel(p.id(next_id))
            next_id += 1
    return dashboard


# -- the service ------------------------------------------------------------------------------------
def service_dashboard() -> db.Dashboard:
    requests = f"flight_delay_requests_total{{{INSTANCE}}}"
    rows_metric = "flight_delay_online_rows_total"
    load_failures = f"flight_delay_model_load_failures_total{{{INSTANCE}}}"
    rows = [
        (
            "Requests",
            [
                panel(
                    "Requests per second by endpoint",
                    "Requests answered by the service's API methods, every outcome.",
                    "reqps",
                    [query(f"sum by (endpoint) (rate({requests}[{RATE}]))", "{{endpoint}}")],
                ),
                panel(
                    "Latency p50 / p95 / p99 by endpoint",
                    "Time inside the API method (answered requests).",
                    "s",
                    quantile_queries(
                        (0.5, 0.95, 0.99),
                        "flight_delay_request_latency_seconds_bucket",
                        "endpoint",
                        INSTANCE,
                        "{{endpoint}}",
                    ),
                ),
                panel(
                    "Errors per second by endpoint and outcome",
                    "client_error: 4xx (bad input, unknown request id, a conflicting outcome); server_error: 5xx, "
                    "among them the 503 of a prediction log at its backlog bound. The 503 of load shedding is "
                    "answered before the service and counted by BentoML's own bentoml_service_request_total.",
                    "reqps",
                    [
                        query(
                            f'sum by (endpoint, outcome) (rate(flight_delay_requests_total{{{INSTANCE}, outcome!="ok"}}'
                            f"[{RATE}]))",
                            "{{endpoint}} {{outcome}}",
                        )
                    ],
                ),
            ],
        ),
        (
            "Stages and online features",
            [
                panel(
                    "Stage latency p50 / p99: feature lookup and inference",
                    "Time per stage of a prediction call.",
                    "s",
                    quantile_queries(
                        (0.5, 0.99), "flight_delay_stage_latency_seconds_bucket", "stage", INSTANCE, "{{stage}}"
                    ),
                ),
                panel(
                    "Online cache hit rate by view",
                    "Share of online rows served from the worker's cache rather than read from the online store.",
                    "percentunit",
                    [
                        query(
                            f'sum by (view) (rate({rows_metric}{{{INSTANCE}, source="cache"}}[{RATE}]))'
                            f" / sum by (view) (rate({rows_metric}{{{INSTANCE}}}[{RATE}]))",
                            "{{view}}",
                        )
                    ],
                ),
            ],
        ),
        (
            "Workers and the prediction log",
            [
                panel(
                    "Worker resident memory",
                    "Resident set size of each live worker process.",
                    "bytes",
                    [query(f"flight_delay_worker_resident_bytes{{{INSTANCE}}}", "{{instance}} pid {{pid}}")],
                ),
                panel(
                    "Prediction log backlog",
                    "Rows acknowledged but not yet committed, over the live workers; predictions are refused "
                    "(503) at FLIGHT_DELAY_LOG_MAX_BACKLOG.",
                    "short",
                    [query(f"sum by (instance) (flight_delay_log_backlog_rows{{{INSTANCE}}})", "{{instance}}")],
                ),
                panel(
                    "Prediction log write errors, spilled and dropped rows",
                    "Failed writes (retried) by SQLite error; rows spilled at shutdown, replayed at start, and "
                    "dropped (zero unless something is broken).",
                    "short",
                    [
                        query(
                            f"sum by (error) (increase(flight_delay_log_write_errors_total{{{INSTANCE}}}[{RATE}]))",
                            "write errors {{error}}",
                            "A",
                        ),
                        *(
                            query(
                                f"sum(increase(flight_delay_log_{kind}_rows_total{{{INSTANCE}}}[{RATE}]))",
                                f"{kind} rows",
                                ref,
                            )
                            for kind, ref in (("spilled", "B"), ("replayed", "C"), ("dropped", "D"))
                        ),
                    ],
                ),
                panel(
                    "Model load failures by variant",
                    "Failed or refused model loads (retried with backoff; the service log says why), and whether "
                    "every live worker has a champion (1) or some has none (0).",
                    "short",
                    [
                        query(
                            f"sum by (variant) (increase({load_failures}[{RATE}]))",
                            "load failures {{variant}}",
                            "A",
                        ),
                        query(f"min(flight_delay_champion_loaded{{{INSTANCE}}})", "champion loaded", "B"),
                    ],
                ),
            ],
        ),
    ]
    dashboard = base(
        "flight-delay-service",
        "Flight delay: service",
        "Traffic, latency, errors, stages, the online cache, workers and the prediction log of the prediction service.",
    )
    dashboard = dashboard.with_variable(datasource_variable()).with_variable(
        label_variable("instance", "Instance", "flight_delay_requests_total")
    )
    return with_panels(dashboard, rows)


# -- the models -------------------------------------------------------------------------------------
def live(name: str, legend: str, ref_id: str = "A") -> Dataquery:
    """A live-quality recording rule over the last hour, per model version and variant."""
    return query(
        f'flight_delay:{name}:1h{{model_version=~"$model_version", variant=~"$variant"}}',
        f"{{{{model_version}}}} {{{{variant}}}} {legend}",
        ref_id,
    )


def offline(metric: str, ref_id: str) -> Dataquery:
    return query(
        f'max by (model_version) ({metric}{{model_version=~"$model_version", {INSTANCE}}})',
        "{{model_version}} offline",
        ref_id,
    )


def drift(name: str, legend: str = "{{feature}} {{model_version}}") -> Dataquery:
    return query(f'flight_delay:{name}{{model_version=~"$model_version", feature=~"$feature"}}', legend)


def psi_panel() -> timeseries.Panel:
    steps = [
        model.Threshold(value=None, color="green"),
        model.Threshold(value=PSI_WARN, color="orange"),
        model.Threshold(value=PSI_ALERT, color="red"),
    ]
    return (
        panel(
            "Drift: PSI per feature (1h)",
            f"Population stability index of each feature's served values over the last hour against the model's "
            f"training shares; {PSI_WARN} moderate, {PSI_ALERT} the drift alert's bound (with 500 values or more).",
            "none",
            [drift("feature_psi:1h")],
        )
        .thresholds(db.ThresholdsConfig().mode(model.ThresholdsMode.ABSOLUTE).steps(steps))
        .thresholds_style(common_builders.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.DASHED))
        .axis_soft_min(0)
        .axis_soft_max(PSI_ALERT * 1.5)
    )


def model_dashboard() -> db.Dashboard:
    score = f"flight_delay_prediction_score_bucket{{{MODEL}}}"
    predictions = f"flight_delay_predictions_total{{{MODEL}}}"
    rows = [
        (
            "Models",
            [
                panel(
                    "Models serving",
                    "1 while some worker serves the model version as this variant.",
                    "short",
                    [
                        query(
                            f"max by (model_version, variant) (flight_delay_model_serving{{{INSTANCE}}})",
                            "{{model_version}} {{variant}}",
                        )
                    ],
                ),
                panel(
                    "Predictions per second by model version and variant",
                    "Predictions served.",
                    "short",
                    [
                        query(
                            f"sum by (model_version, variant) (rate({predictions}[{RATE}]))",
                            "{{model_version}} {{variant}}",
                        )
                    ],
                ),
            ],
        ),
        (
            "Scores",
            [
                heatmap.Panel()
                .title("Score distribution")
                .description("Predicted probabilities of the chosen model versions and variants, in bins of 0.05.")
                .datasource(DATASOURCE)
                .grid_pos(model.GridPos(h=8, w=12))
                .calculate(False)
                .targets(
                    [
                        query(f"sum by (le) (increase({score}[{RATE}]))", "{{le}}").format(PromQueryFormat.HEATMAP),
                    ]
                ),
                panel(
                    "Score p10 / p50 / p90 by model version and variant",
                    "Quantiles of the predicted probability.",
                    "percentunit",
                    quantile_queries(
                        (0.1, 0.5, 0.9),
                        "flight_delay_prediction_score_bucket",
                        "model_version, variant",
                        MODEL,
                        "{{model_version}} {{variant}}",
                    ),
                ),
            ],
        ),
        (
            "Live quality: feedback over the last hour",
            [
                panel(
                    "Live log loss vs offline",
                    "Mean log loss of the predictions whose outcome arrived in the last hour (at least the 60 min "
                    "horizon after the prediction); dashed: the model's log loss on its evaluation window.",
                    "none",
                    [live("live_log_loss", "live"), offline("flight_delay_model_offline_log_loss", "B")],
                ).override_by_regexp(*dashed(".*offline")),
                panel(
                    "Live ROC AUC vs offline",
                    "AUC from the scores binned by 0.05 (pairs in one bin count one half); dashed: offline AUC.",
                    "none",
                    [live("live_auc", "live"), offline("flight_delay_model_offline_auc", "B")],
                ).override_by_regexp(*dashed(".*offline")),
                panel(
                    "Live Brier score",
                    "Mean (p - late)^2 of the predictions with feedback.",
                    "none",
                    [live("live_brier", "")],
                ),
                panel(
                    "Live hit rate at the threshold",
                    "Share of predictions with feedback whose call at the threshold was right.",
                    "percentunit",
                    [live("live_hit_rate", "")],
                ),
                panel(
                    "Mean predicted vs observed late rate",
                    "Calibration: the mean probability of the predictions with feedback, and the share that were late.",
                    "percentunit",
                    [live("live_mean_predicted", "predicted", "A"), live("live_late_rate", "observed", "B")],
                ),
                panel(
                    "Feedback samples (1h)",
                    "Predictions whose first feedback arrived in the last hour: the sample size of the panels beside.",
                    "short",
                    [live("feedback_count", "")],
                ),
            ],
        ),
        (
            "Drift",
            [
                psi_panel(),
                panel(
                    "Drift: Jensen-Shannon distance per feature (1h)",
                    "Between the served shares over the last hour and the training shares (natural log).",
                    "none",
                    [drift("feature_js:1h")],
                ),
                panel(
                    "Served values per feature (1h)",
                    "The count behind each PSI: the drift alert needs 500 or more.",
                    "short",
                    [drift("feature_count:increase1h")],
                ),
            ],
        ),
        (
            "Entities and feature freshness",
            [
                panel(
                    "Unknown entities per prediction",
                    "Requests whose entity the feature store did not know (served with defaults), per prediction.",
                    "percentunit",
                    [
                        query(
                            f"sum by (entity, variant) (rate(flight_delay_unknown_entities_total{{{MODEL}}}[{RATE}]))"
                            f" / on (variant) group_left"
                            f" sum by (variant) (rate({predictions}[{RATE}]))",
                            "{{entity}} {{variant}}",
                        )
                    ],
                ),
                panel(
                    "Feature age p50 / p90 by view, and TTL",
                    "Age of the online values served at prediction time; dashed: the view's TTL (older values are "
                    "served as missing).",
                    "s",
                    [
                        *quantile_queries(
                            (0.5, 0.9), "flight_delay_feature_age_seconds_le_total", "view", INSTANCE, "{{view}}"
                        ),
                        query(
                            f"max by (view) (flight_delay_feature_ttl_seconds{{{INSTANCE}}}) > 0", "{{view}} TTL", "C"
                        ),
                    ],
                ).override_by_regexp(*dashed(".* TTL")),
            ],
        ),
    ]
    champion = 'flight_delay_model_serving{variant="champion"}'
    dashboard = (
        base(
            "flight-delay-model",
            "Flight delay: models",
            "Scores, live quality against the offline figures, drift per feature, unknown entities and feature "
            "age, the model versions serving; promotions and rollbacks as annotations.",
        )
        .with_variable(datasource_variable())
        .with_variable(label_variable("instance", "Instance", "flight_delay_model_serving"))
        .with_variable(label_variable("model_version", "Model version", "flight_delay_model_serving"))
        .with_variable(label_variable("variant", "Variant", "flight_delay_model_serving"))
        .with_variable(label_variable("feature", "Feature", "flight_delay_feature_value_total"))
        .annotation(
            db.AnnotationQuery()
            .name("Champion changes (promotion or rollback)")
            .datasource(DATASOURCE)
            .enable(True)
            .icon_color("purple")
            .expr(
                f"max by (model_version) ({champion}) == 1 unless max by (model_version) "
                f"({champion} offset {CHAMPION_CHANGE_WINDOW}) == 1"
            )
        )
    )
    return with_panels(dashboard, rows)


# -- JSON -------------------------------------------------------------------------------------------
DASHBOARDS: dict[str, Callable[[], db.Dashboard]] = {"service": service_dashboard, "model": model_dashboard}


def render(name: str) -> str:
    """The JSON text of dashboard ``name`` as committed."""
    return JSONEncoder(sort_keys=True, indent=2).encode(DASHBOARDS[name]().build()) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare with the committed files, write nothing")
    args = parser.parse_args(argv)
    stale = []
    for name in DASHBOARDS:
        path, text = DASHBOARD_DIR / f"{name}.json", render(name)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
    if stale:
        print(f"stale: {', '.join(stale)}; run python -m deploy.grafana.dashboards", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
