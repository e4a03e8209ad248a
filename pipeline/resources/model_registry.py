"""The model registry: BentoML's model store plus the champion history."""

from abc import ABC, abstractmethod

import dagster as dg
from pydantic import Field

from flight_delay.registry import ModelRegistry


class ModelRegistryResource(dg.ConfigurableResource, ABC):
    @abstractmethod
    def registry(self) -> ModelRegistry: ...


class LocalModelRegistry(ModelRegistryResource):
    """Registry in a local BentoML home (the service reads the same folder)."""

    bentoml_home: str = Field(description="BentoML home folder; models live in <home>/models.")
    database_url: str | None = Field(
        default=None,
        description="postgresql://user:password@host:port/database holding the champion history that all "
        "replicas share (FLIGHT_DELAY_DATABASE_URL); unset: <home>/champions.",
    )

    def registry(self) -> ModelRegistry:
        return ModelRegistry(self.bentoml_home, self.database_url)
