"""Celery workers: a thin task that runs a job with the converter library and reports progress to the store."""
