"""The BentoML prediction service (``serving.service:FlightDelayService``). Never imports Dagster."""
