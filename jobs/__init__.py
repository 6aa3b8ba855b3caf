"""What the API and the workers share: the job spec, the Redis job store, the settings, and the queue (task names
and the Celery configuration). ``service`` and ``worker`` import this package; neither imports the other, and this
package imports only ``converter`` (and Redis, Celery, pydantic)."""
