"""The ``ckpt-convert`` command: the library's commands (convert, plan, rules, demo) plus the service's
(serve, worker, submit)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from converter import cli as lib_cli

from .exit_codes import help_epilog


def add_service_commands(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("serve", help="run the API and a worker (and an embedded Redis if REDIS_URL is unset)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--concurrency", type=int, default=1, help="jobs the worker runs at once")
    s.add_argument("--api-workers", type=int, default=2, help="API processes (uvicorn workers)")
    s.set_defaults(func=lambda a: _serve(a))

    w = sub.add_parser("worker", help="run one Celery worker on REDIS_URL")
    w.add_argument("--concurrency", type=int, default=1)
    w.set_defaults(func=lambda a: _worker(a))

    c = sub.add_parser(
        "submit",
        help="submit a job to a running service (for CI); --wait follows it to the end",
        description="Submit a conversion job to a running service; with --wait, follow it until it ends.\n"
        "The exit code says how it ended. Messages go to stderr; stdout holds the job id, or with --json\n"
        "the job's record. Ctrl-C or SIGTERM while waiting cancels the job (--detach: leaves it running).",
        epilog=help_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument(
        "source", help="Hub repo id (org/name, hf://org/name) or a local folder on the workers' machine"
    )
    c.add_argument("--to", help="destination: a folder, or hf://org/name")
    c.add_argument("--revision", default="main")
    c.add_argument("--model-type")
    c.add_argument("--reverse", action="store_true")
    c.add_argument("--dtype", choices=["bf16", "fp16", "fp32"])
    c.add_argument("--dequantize", action="store_true")
    c.add_argument("--max-shard-size", default="5GB")
    c.add_argument("--pr", action="store_true", help="publish as a pull request")
    c.add_argument("--private", action="store_true", help="create the destination repo private")
    c.add_argument(
        "--overwrite",
        action="store_true",
        help="replace what the destination holds (else nothing there is ever replaced)",
    )
    c.add_argument(
        "--wait", action="store_true", help="show progress until the job ends; exit 0 only on success"
    )
    c.add_argument(
        "--timeout",
        type=_seconds,
        metavar="SECONDS",
        help="with --wait (implied): give up after SECONDS, cancel the job (unless --detach) and exit 6",
    )
    c.add_argument(
        "--detach",
        action="store_true",
        help="on Ctrl-C, SIGTERM or --timeout leave the job running instead of cancelling it",
    )
    c.add_argument(
        "--json",
        action="store_true",
        help="print the job's final record (GET /jobs/{id}) on stdout, only that",
    )
    c.add_argument("--server", help=f"API URL (default: $CKPT_CONVERT_SERVER or {'http://127.0.0.1:8000'})")
    c.add_argument("--hf-token", help="Hub token for this job only (default: $CKPT_CONVERT_HF_TOKEN)")
    c.add_argument("--idempotency-key", help="retry-safe submission key")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=lambda a: _submit(a))


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def _serve(a: argparse.Namespace) -> int:
    from .launcher import serve

    return serve(a.host, a.port, a.concurrency, a.api_workers)


def _worker(a: argparse.Namespace) -> int:
    from .launcher import run_worker

    return run_worker(a.concurrency)


def _submit(a: argparse.Namespace) -> int:
    from .client import main_submit

    a.wait = a.wait or a.timeout is not None
    return main_submit(a)


def main(argv: Sequence[str] | None = None) -> int:
    parser = lib_cli.build_parser(extend=add_service_commands)
    return lib_cli.run(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
