"""The model registry: BentoML's model store plus the champion history."""

from abc import ABC, abstractmethod

import dagster as dg
from pydantic import Field

from flight_delay.object_store import S3Location
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

    s3_bucket: str | None = Field(
        default=None,
        description="The aws and k8s profiles: the bucket of the model versions (FLIGHT_DELAY_S3_BUCKET); they are "
        "archives under <prefix>/models/, registered in the database, and <home>/models is a verified cache of them. "
        "Unset: the versions live only in <home>/models.",
    )
    s3_prefix: str = Field(default="", description="Key prefix in s3_bucket (FLIGHT_DELAY_S3_PREFIX).")

    def registry(self) -> ModelRegistry:
        s3 = S3Location(self.s3_bucket, self.s3_prefix.strip("/")) if self.s3_bucket else None
        return ModelRegistry(self.bentoml_home, self.database_url, s3)
