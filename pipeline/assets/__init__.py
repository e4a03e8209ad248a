"""Asset groups, one module each: ingestion → validated → features → feature_store → training."""
