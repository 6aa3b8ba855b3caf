"""``ckpt-convert``: convert, plan, inspect rules, and a demo, on one machine.

Exit codes: 0 success, 1 the conversion was refused or failed (the message says why), 2 bad arguments,
130 interrupted. Nothing is left half-written in any case.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import ConversionError
from .planner import DEFAULT_MAX_SHARD_SIZE, Plan, plan, resolve_model_type
from .rules import FORMAT_VERSION, get_entry, model_types, rules_for
from .rules.core import Convert, Direction

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

# rich is imported when something is shown to a person: `plan --json > file` needs none of it (a third of the
# command's time)


@functools.cache
def _out() -> Console:
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 160)


@functools.cache
def _err() -> Console:
    from rich.console import Console

    return Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def print_json(doc: Any) -> None:
    """``doc`` as indented JSON on stdout: highlighted on a terminal, else plain (the same text rich writes)."""
    if sys.stdout.isatty():
        _out().print_json(json.dumps(doc))
    else:
        sys.stdout.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} TB"


# --- convert / plan --------------------------------------------------------------------------------------------


def progress_bar(quiet: bool, console: Console | None = None) -> Progress:
    """The byte progress bar of ``convert`` (and of ``submit --wait``), on stderr; off when ``quiet`` or when
    stderr is not a terminal (CI logs get no redraws)."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    console = console or _err()
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=quiet or not console.is_terminal,
    )


def _print_plan_summary(p: Plan, title: str) -> None:
    from rich.table import Table

    s = p.summary()
    t = Table(title=title, show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold")
    t.add_column()
    t.add_row("source", s["source"])
    t.add_row("model_type", f"{p.model_type} ({p.direction})" + (f", cast to {p.dtype}" if p.dtype else ""))
    c = s["counts"]
    parts = [f"{c[k]} {k}" for k in ("convert", "rename", "copy", "cast") if c.get(k)]
    t.add_row("tensors", f"{s['tensors_in']} in -> {s['tensors_out']} out ({', '.join(parts)})")
    t.add_row(
        "bytes",
        f"{human_bytes(s['bytes_in'])} in -> {human_bytes(s['bytes_out'])} out"
        + (
            f" ({human_bytes(s['bytes_computed'])} computed, rest copied)"
            if s["bytes_computed"]
            else " (all byte copies)"
        ),
    )
    t.add_row(
        "shards", f"{s['source_shards']} in -> {s['output_shards']} out (max {human_bytes(p.max_shard_size)})"
    )
    _out().print(t)


DEQUANTIZE_HELP = (
    "dequantize a pre-quantized (FP8, MXFP4) checkpoint as transformers does, to --dtype (default: config.json's "
    "dtype, else bf16); by default it stays quantized"
)


def cmd_convert(a: argparse.Namespace) -> int:
    from .job import ConversionJob
    from .spec import JobSpec

    direction = Direction.REVERSE if a.reverse else Direction.FORWARD
    spec = JobSpec.from_cli(
        a.source,
        a.output,
        model_type=a.model_type,
        direction=direction,
        dtype=a.dtype,
        max_shard_size=a.max_shard_size,
        dequantize=a.dequantize,
        check_layout=not a.no_layout_check,
        overwrite=a.overwrite,
        create_pr=a.pr,
        private=a.private,
    )
    job = ConversionJob(spec, device=a.device)
    p = job.plan()
    if a.dry_run:
        if a.json:
            print_json(p.to_dict(pieces=False))
        else:
            _print_plan_summary(p, "dry run: nothing written")
        return 0
    with progress_bar(a.quiet or a.json) as bar:
        task = bar.add_task("converting", total=p.total_bytes)

        def on_progress(ev: Any) -> None:
            bar.update(task, completed=ev.bytes_done, description=ev.phase)

        result = job.run(progress=on_progress)
    if a.verify:
        from .verifier import verify

        rep = verify(p, job.source, result.output)
        verified = f"verified {rep.tensors} tensors, {human_bytes(rep.bytes_compared)} compared byte for byte"
    else:
        verified = ""
    if a.json:
        print_json({**result.summary(), "verified": bool(a.verify)})
        return 0
    from rich.table import Table

    _print_plan_summary(p, "nothing to convert" if result.noop else "converted")
    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold")
    t.add_column()
    t.add_row("output", result.output)
    if result.noop:
        t.add_row(
            "nothing to convert",
            f"already in the {direction} layout; {len(result.shards)} weight file(s) linked unchanged"
            if result.shards
            else f"already in the {direction} layout; the destination is the source, nothing was written",
        )
    else:
        t.add_row(
            "written",
            f"{len(result.shards)} shard(s), {human_bytes(result.bytes_written)} in {result.seconds:.2f} s "
            f"({human_bytes(result.bytes_written / max(result.seconds, 1e-9))}/s)",
        )
    if result.copied_files:
        t.add_row("copied", ", ".join(result.copied_files))
    if result.skipped_files:
        t.add_row(
            "skipped",
            ", ".join(result.skipped_files) + " (not part of the checkpoint: other weights, folders)",
        )
    for w in p.warnings:
        t.add_row("[yellow]warning[/]", w)
    if verified:
        t.add_row("verify", verified)
    _out().print(t)
    return 0


def cmd_plan(a: argparse.Namespace) -> int:
    p = plan(
        a.source,
        model_type=a.model_type,
        direction=Direction.REVERSE if a.reverse else Direction.FORWARD,
        dtype=a.dtype,
        max_shard_size=a.max_shard_size,
        dequantize=a.dequantize,
        check_layout=not a.no_layout_check,
    )
    if a.json:
        print_json(p.to_dict(pieces=a.pieces))
        return 0
    _print_plan_summary(p, "plan (from headers only)")
    if p.is_noop:
        _out().print("[green]already in the target layout: nothing to convert[/]")
        return 0
    from rich.table import Table

    changed = [t for t in p.tensors if not t.kept]
    t = Table(title=f"{len(changed)} tensor(s) change", show_lines=False)
    for col in ("output", "dtype", "shape", "how", "from"):
        t.add_column(col)
    shown = changed if a.all else changed[:25]
    for x in shown:
        src = x.sources[0] if len(x.sources) == 1 else f"{len(x.sources)} tensors: {x.sources[0]}, ..."
        t.add_row(x.name, x.dtype, str(list(x.shape)), x.label, src)
    _out().print(t)
    if len(shown) < len(changed):
        _out().print(f"... and {len(changed) - len(shown)} more (--all shows every one, --json everything)")
    return 0


# --- rules ------------------------------------------------------------------------------------------------------


def cmd_rules(a: argparse.Namespace) -> int:
    from rich.table import Table

    direction = Direction.REVERSE if a.reverse else Direction.FORWARD
    config = _read_config_arg(a.config) if a.config else None
    if a.model_type is None and config is not None:
        a.model_type = resolve_model_type(None, config, a.config)
    if a.model_type is None:
        rows = [get_entry(m).summary() for m in model_types(every=a.all)]
        if a.json:
            print_json(rows)
            return 0
        supported = sum(r["supported"] for r in rows)
        none = sum(r["conversion"] == "none" for r in rows)
        t = Table(
            title=f"{len(rows)} model types ({supported} supported"
            + (f"; {none} need no conversion" if none else "; --all adds the types that need no conversion")
            + ")"
        )
        for col in (
            "model_type",
            "family",
            "ops",
            "merges tensors",
            "tensor ops",
            "pre-quantized",
            "supported",
        ):
            t.add_column(col)
        for r in rows:
            quant = ", ".join(r["quantized"])  # each kept as is or dequantized (--dequantize)
            t.add_row(
                r["model_type"] + (f" (= {r['alias_of']})" if r["alias_of"] else ""),
                r["family"],
                ", ".join(r["ops"]) or "-",
                "yes" if r["merges_tensors"] else "no",
                "yes" if r["requires_tensor_merging"] else "no (renames)",
                quant or "-",
                "yes" if r["supported"] else f"no: {r['unsupported_reason']}",
            )
        _out().print(t)
        return 0
    rs = rules_for(a.model_type, direction=direction, config=config)
    entry = get_entry(a.model_type)
    if a.json:
        print_json({**entry.summary(), "format_version": FORMAT_VERSION, **rs.to_dict()})
        return 0
    if entry.conversion == "none" and not rs.nested:
        _out().print(
            f"[green]{a.model_type}: no conversion needed[/] -- transformers loads its checkpoints as published; "
            f"only the legacy renames apply ({len(rs.renames)} listed below)"
        )
    t = Table(title=f"{a.model_type} ({direction}): applied in this order")
    for col in ("#", "kind", "from", "to", "ops / conditions"):
        t.add_column(col)
    for i, rule in enumerate(rs.rules, 1):
        d = rule.to_dict()
        where = f"under {d['scope']}" if d.get("scope") else ""
        when = f"when {d['when']}" if d.get("when") else ""
        if isinstance(rule, Convert):
            ops = ", then ".join(op.describe() for op in rule.ops)
            t.add_row(
                str(i),
                "convert",
                "\n".join(rule.sources),
                "\n".join(rule.targets),
                "; ".join(filter(None, (ops, where, when))),
            )
        elif d["kind"] == "rename":
            cond = f"unless {', '.join(d['unless'])}" if d.get("unless") else ""
            off = f"index + {d['index_offset']}" if d.get("index_offset") else ""
            t.add_row(
                str(i), "rename", d["source"], d["target"], "; ".join(filter(None, (cond, off, where, when)))
            )
        elif d["kind"] == "rename_group":
            members = d["renames"]
            t.add_row(
                str(i),
                "rename group",
                "\n".join(m["source"] for m in members),
                "\n".join(m["target"] for m in members),
                "at once; only if the first source is present",
            )
        else:
            t.add_row(
                str(i), d["kind"], d["pattern"], d["replacement"], "; ".join(filter(None, ("one-way", where)))
            )
    _out().print(t)
    if entry.submodels:
        _out().print(
            "nested sub-models: " + ", ".join(f"{n.key} under {n.path or '(root)'}" for n in entry.submodels)
        )
    if rs.nested:
        _out().print("from config.json: " + ", ".join(f"{k} rules under {p}" for p, k in rs.nested))
    if rs.keep_fp32:
        _out().print(f"kept in float32 under --dtype bf16/fp16: {', '.join(rs.keep_fp32)}")
    support = entry.quantized_support
    if support:
        _out().print("pre-quantized: " + "; ".join(f"{k} ({' or '.join(v)})" for k, v in support.items()))
    if entry.unsupported:
        _out().print(f"[red]not supported: {entry.unsupported}[/]")
    return 0


def _read_config_arg(path: str) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    try:
        doc = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {p} as JSON ({e})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{p} is not a JSON object")
    return doc


# --- demo ---------------------------------------------------------------------------------------------------------


def cmd_demo(a: argparse.Namespace) -> int:
    from .demo import MixtralShape, write_mixtral_checkpoint
    from .job import convert
    from .storage import LocalSource
    from .verifier import verify

    work = Path(a.workdir or tempfile.mkdtemp(prefix="ckpt-convert-demo-"))
    shape = MixtralShape(layers=4, experts=8, hidden=256, intermediate=512, vocab=1024)
    published = write_mixtral_checkpoint(work / "published", shape, max_shard_bytes=8_000_000)
    _out().print(f"wrote a Mixtral-shaped checkpoint (published layout) to {published}")
    with progress_bar(False) as bar:
        task = bar.add_task("converting", total=None)
        result = convert(
            published,
            work / "grouped",
            overwrite=True,
            progress=lambda ev: bar.update(task, total=ev.bytes_total, completed=ev.bytes_done),
        )
    _print_plan_summary(result.plan, "demo: published -> transformers v5 layout")
    _out().print(
        f"output: {result.output} ({len(result.shards)} shards, {human_bytes(result.bytes_written)}, "
        f"{result.seconds:.2f} s)"
    )
    rep = verify(result.plan, LocalSource(published), result.output)
    _out().print(f"verified: {rep.tensors} tensors equal their plan byte for byte")
    t0 = time.monotonic()
    back = convert(result.output, work / "roundtrip", direction=Direction.REVERSE, overwrite=True)
    same = _same_tensors(published, Path(back.output))
    _out().print(
        f"reverse: {back.output} in {time.monotonic() - t0:.2f} s; round trip "
        + ("[green]identical to the original, bit for bit[/]" if same else "[red]DIFFERS[/]")
    )
    return 0 if same else 1


def _same_tensors(a: Path, b: Path) -> bool:
    from .checkpoint import read_local_checkpoint
    from .storage import LocalReader

    ia, ib = read_local_checkpoint(a), read_local_checkpoint(b)
    if set(ia.tensors) != set(ib.tensors):
        return False
    ra, rb = LocalReader(a), LocalReader(b)
    try:
        for name, x in ia.tensors.items():
            y = ib.tensors[name]
            if (x.dtype, x.shape) != (y.dtype, y.shape):
                return False
            if ra.read(x.file, x.offset, x.length) != rb.read(y.file, y.offset, y.length):
                return False
    finally:
        ra.close()
        rb.close()
    return True


# --- entry point ---------------------------------------------------------------------------------------------------


def build_parser(extend: Callable[[Any], None] | None = None) -> argparse.ArgumentParser:
    """The parser of the library's commands; ``extend(subparsers)`` adds more (the service's)."""
    ap = argparse.ArgumentParser(
        prog="ckpt-convert",
        description="Convert model checkpoints between the published (Hub) layout and the transformers v5 layout.",
    )
    ap.add_argument("--version", action="version", version=f"ckpt-convert {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model-type", help="model_type of the rules (default: SOURCE/config.json's)")
        p.add_argument("--reverse", action="store_true", help="model layout -> published layout")
        p.add_argument(
            "--dtype", choices=["bf16", "fp16", "fp32"], help="cast floats, keeping transformers' fp32 params"
        )
        p.add_argument(
            "--max-shard-size", default=DEFAULT_MAX_SHARD_SIZE, help="e.g. 5GB (default), 500MB, 2GiB"
        )
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.add_argument(
            "--no-layout-check",
            action="store_true",
            help="do not refuse tensor names that a model of this type does not have (at your own risk: "
            "transformers ignores such tensors and initialises the missing ones randomly)",
        )

    c = sub.add_parser("convert", help="convert a checkpoint folder")
    c.add_argument("source")
    c.add_argument("output")
    common(c)
    c.add_argument("--dry-run", action="store_true", help="plan and print the summary; write nothing")
    c.add_argument("--overwrite", action="store_true", help="replace OUTPUT (atomically) if it exists")
    c.add_argument("--pr", action="store_true", help="with OUTPUT hf://org/name: publish as a pull request")
    c.add_argument(
        "--private", action="store_true", help="with OUTPUT hf://org/name: create the repo private"
    )
    c.add_argument(
        "--verify", action="store_true", help="re-read the output and compare every byte with the plan"
    )
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    c.add_argument("--dequantize", action="store_true", help=DEQUANTIZE_HELP)
    c.add_argument(
        "--device",
        # the environment variable is read here only: the library takes the device as an argument
        default=os.environ.get("CKPT_CONVERT_DEVICE"),
        help="where arithmetic ops (cast, transpose, dequantize) run: auto (default: a GPU when torch sees one), "
        "cpu, cuda, cuda:N; same bytes on any (default: $CKPT_CONVERT_DEVICE, else auto)",
    )
    c.set_defaults(func=cmd_convert)

    p = sub.add_parser("plan", help="show what a conversion would do, from the headers alone")
    p.add_argument("source")
    common(p)
    p.add_argument("--all", action="store_true", help="list every changed tensor")
    p.add_argument("--pieces", action="store_true", help="with --json: include every byte range")
    p.add_argument("--dequantize", action="store_true", help=DEQUANTIZE_HELP)
    p.set_defaults(func=cmd_plan)

    r = sub.add_parser("rules", help="list model types, or show one model type's rules")
    r.add_argument("model_type", nargs="?")
    r.add_argument("--reverse", action="store_true")
    r.add_argument("--json", action="store_true")
    r.add_argument("--all", action="store_true", help="list every model type transformers knows")
    r.add_argument(
        "--config",
        help="a config.json (or its folder): the rules composed for it, nested sub-models included",
    )
    r.set_defaults(func=cmd_rules)

    d = sub.add_parser("demo", help="make a small Mixtral-shaped checkpoint, convert it and back, and verify")
    d.add_argument("--workdir", help="where to write (default: a new temporary folder)")
    d.set_defaults(func=cmd_demo)
    if extend is not None:
        extend(sub)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), argv)


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConversionError as e:
        _err().print(f"[red]error[/] [bold]{type(e).__name__}[/]: {e.message}", highlight=False)
        return 1
    except ValueError as e:
        _err().print(f"[red]error[/]: {e}", highlight=False)
        return 2
    except KeyboardInterrupt:
        _err().print("[yellow]interrupted; nothing was published[/]")
        return 130


if __name__ == "__main__":
    sys.exit(main())
