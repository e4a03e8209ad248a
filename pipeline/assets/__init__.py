"""Asset groups, one module each: ingestion → validated → feature_tables → feature_store → training →
packaging; monitoring reads what the service logged."""
