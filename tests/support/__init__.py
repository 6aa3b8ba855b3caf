"""What the tests share: checkpoint builders and readers (``helpers``), transformers' tiny models as the oracle
(``tiny_models``), the real processes a test starts (``servers``: Valkey, the API, Celery workers), and the local Hub
stand-in (``hub_standin``) with its pytest wiring (``hubenv``). ``tests/conftest.py`` puts ``tests/`` on the path, so
a test imports ``from support.helpers import ...``; the benches in ``bench/`` do the same."""
