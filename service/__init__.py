"""The conversion service: FastAPI app (jobs, rules, health, metrics), Redis job store, settings."""
