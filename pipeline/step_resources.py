"""CPU and memory of each asset's step when it runs in a pod of its own (the k8s profile).

One size per asset group, attached to every asset as the ``dagster-k8s/config`` op tag: the
``k8s_job_executor`` merges it into the step's container, the UI lists it among the op's tags, and
the in-process executor of the local profile ignores it. The sizes are starting points chosen from
what each group does (pandas over a year of departures, TensorFlow fitting a network), not
measurements: change them here, in one place.
"""

import json
from dataclasses import dataclass
from typing import Final

K8S_CONFIG_TAG: Final = "dagster-k8s/config"


@dataclass(frozen=True)
class StepSize:
    """Requests (what the scheduler reserves) and limits (where the container is throttled or killed)."""

    cpu: str
    memory: str
    cpu_limit: str
    memory_limit: str

    def resources(self) -> dict[str, dict[str, str]]:
        return {
            "requests": {"cpu": self.cpu, "memory": self.memory},
            "limits": {"cpu": self.cpu_limit, "memory": self.memory_limit},
        }


SIZE_BY_GROUP: Final[dict[str, StepSize]] = {
    # Reads and validates source tables: I/O bound, a day's rows at a time.
    "ingestion": StepSize(cpu="250m", memory="512Mi", cpu_limit="1", memory_limit="1Gi"),
    "validated": StepSize(cpu="250m", memory="1Gi", cpu_limit="1", memory_limit="2Gi"),
    # Rolling windows over up to 28 days of departures in pandas.
    "feature_tables": StepSize(cpu="500m", memory="2Gi", cpu_limit="2", memory_limit="4Gi"),
    # Feast apply and materialization into the online store.
    "feature_store": StepSize(cpu="500m", memory="1Gi", cpu_limit="2", memory_limit="2Gi"),
    # The point-in-time join of the training set and TensorFlow's fit: the heaviest steps.
    "training": StepSize(cpu="2", memory="4Gi", cpu_limit="4", memory_limit="8Gi"),
    "packaging": StepSize(cpu="500m", memory="1Gi", cpu_limit="1", memory_limit="2Gi"),
    "monitoring": StepSize(cpu="250m", memory="512Mi", cpu_limit="1", memory_limit="1Gi"),
    "model_lifecycle": StepSize(cpu="250m", memory="512Mi", cpu_limit="1", memory_limit="1Gi"),
}


def step_op_tags(group: str) -> dict[str, str]:
    """``op_tags`` of an asset of ``group``: its step's container resources, as dagster-k8s reads them."""
    if group not in SIZE_BY_GROUP:
        raise KeyError(
            f"asset group {group!r} has no step size; add it to SIZE_BY_GROUP in pipeline/step_resources.py "
            f"(groups with a size: {sorted(SIZE_BY_GROUP)})"
        )
    return {K8S_CONFIG_TAG: json.dumps({"container_config": {"resources": SIZE_BY_GROUP[group].resources()}})}
