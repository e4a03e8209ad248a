"""Feature services: the versioned feature sets models are trained on and served with. Training
(`get_historical_features`) and serving (`get_online_features`) both name the service, so the
two cannot ask for different features. A new feature set is a new version, never an edit."""

from feast import FeatureService, FeatureView

from features import FLIGHT_DELAY_SERVICE
from flight_delay.model import MODEL_NAME


def build_services(views: dict[str, FeatureView]) -> list[FeatureService]:
    return [
        FeatureService(
            name=FLIGHT_DELAY_SERVICE,
            features=list(views.values()),
            description="Departure delay model features, first version.",
            tags={"model": MODEL_NAME},
        )
    ]
