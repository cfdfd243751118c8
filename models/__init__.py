"""Default models shipped with adapdate (installed as the `adapdate_models` package)."""
