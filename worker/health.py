"""Container healthcheck of a worker: ``python -m worker.health`` exits 0 if this host's worker sent a heartbeat
to Redis in the last 30 seconds (what GET /readyz counts)."""

from __future__ import annotations

import socket
import sys

from jobs.settings import get_settings
from jobs.store import JobStore


def main() -> int:
    store = JobStore(get_settings().redis)
    host = socket.gethostname()
    alive = [w for w in store.workers_alive(30) if w.split("@", 1)[-1] == host]
    print("ok: " + ", ".join(alive) if alive else f"no heartbeat from a worker on {host}")
    return 0 if alive else 1


if __name__ == "__main__":
    sys.exit(main())
