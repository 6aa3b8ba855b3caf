"""Hostile files: the safetensors header parser, the checkpoint reader and the planner on generated inputs.

Over 10,000 generated inputs in all: random bytes, structured headers with wrong dtypes, shapes, offsets and
overlaps, declared header lengths up to 2^64, truncated files, index files naming absolute paths, ``..``,
nested paths and symlinks out of the folder. The only acceptable outcome is success with a consistent result,
or a typed :class:`~converter.errors.ConversionError`; never another exception, never a read past the header
cap, never a file written outside the output folder.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import struct
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from converter import convert, plan
from converter.errors import ConversionError, HeaderError
from converter.safetensors_io import DTYPE_BITS, MAX_HEADER_SIZE, dtype_nbytes, parse_header, read_header

FAST = settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DTYPES = sorted(DTYPE_BITS) + ["F7", "", "bf16", "INT4", "F32 "]


def check_header(raw: bytes, file_size: int) -> None:
    """parse_header either succeeds with a consistent result or raises HeaderError."""
    try:
        h = parse_header(raw, file="f.safetensors", file_size=file_size, header_size=len(raw))
    except HeaderError as e:
        assert e.file == "f.safetensors"
        return
    data_start = 8 + len(raw)
    spans = []
    for t in h.tensors.values():
        assert t.dtype in DTYPE_BITS
        assert all(isinstance(d, int) and d >= 0 for d in t.shape)
        assert data_start <= t.offset and t.offset + t.length <= file_size
        assert t.length == dtype_nbytes(t.dtype, t.shape)
        if t.length:
            spans.append((t.offset, t.offset + t.length))
    spans.sort()
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False)), "overlap accepted"


@FAST
@given(st.binary(max_size=300), st.integers(min_value=0, max_value=2**64))
def test_random_bytes_as_header(raw, extra):
    check_header(raw, 8 + len(raw) + extra)


def entries():
    shape = st.lists(
        st.one_of(st.integers(min_value=-3, max_value=40), st.just(2**40), st.text(max_size=2)), max_size=4
    )
    offsets = st.lists(
        st.one_of(st.integers(min_value=-5, max_value=5000), st.just(2**63), st.floats(0, 10)), max_size=3
    )
    entry = st.fixed_dictionaries(
        {},
        optional={
            "dtype": st.one_of(st.sampled_from(DTYPES), st.integers()),
            "shape": st.one_of(shape, st.integers(), st.none()),
            "data_offsets": st.one_of(offsets, st.text(max_size=3)),
        },
    )
    meta = st.one_of(
        st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=3),
        st.integers(),
        st.lists(st.integers(), max_size=2),
    )
    return st.dictionaries(
        st.text(max_size=12), st.one_of(entry, st.integers(), st.none()), max_size=6
    ).flatmap(lambda d: st.one_of(st.just(d), meta.map(lambda m: {**d, "__metadata__": m})))


@FAST
@given(entries(), st.integers(min_value=0, max_value=6000))
def test_structured_headers(doc, data_size):
    raw = json.dumps(doc).encode()
    check_header(raw, 8 + len(raw) + data_size)


@st.composite
def valid_then_broken(draw):
    """A valid header of a few tensors, then one field broken (offset shifted, shape grown, dtype changed)."""
    n = draw(st.integers(min_value=1, max_value=5))
    doc, pos = {}, 0
    for i in range(n):
        dtype = draw(st.sampled_from(["F32", "BF16", "U8", "I64", "F4"]))
        shape = draw(st.lists(st.integers(min_value=0, max_value=6), min_size=0, max_size=3))
        if dtype == "F4" and math.prod(shape) % 2:  # 4-bit elements come in pairs
            shape = [*shape, 2]
        size = dtype_nbytes(dtype, shape)
        doc[f"t{i}"] = {"dtype": dtype, "shape": shape, "data_offsets": [pos, pos + size]}
        pos += size
    victim = draw(st.sampled_from(sorted(doc)))
    how = draw(st.sampled_from(["none", "shift", "grow", "dtype", "overlap", "end"]))
    e = doc[victim]
    if how == "shift":
        d = draw(st.integers(min_value=-3, max_value=3))
        e["data_offsets"] = [e["data_offsets"][0] + d, e["data_offsets"][1] + d]
    elif how == "grow":
        e["shape"] = [*e["shape"], draw(st.integers(min_value=2, max_value=2**50))]
    elif how == "dtype":
        e["dtype"] = draw(st.sampled_from(DTYPES))
    elif how == "overlap" and len(doc) > 1:
        other = doc[next(k for k in doc if k != victim)]
        e["data_offsets"] = list(other["data_offsets"])
        e["shape"], e["dtype"] = list(other["shape"]), other["dtype"]
    elif how == "end":
        pos -= draw(st.integers(min_value=0, max_value=3))
    return doc, max(pos, 0)


@FAST
@given(valid_then_broken())
def test_nearly_valid_headers(case):
    doc, data_size = case
    raw = json.dumps(doc).encode()
    check_header(raw, 8 + len(raw) + data_size)


@settings(
    max_examples=1500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    declared=st.one_of(st.integers(min_value=0, max_value=400), st.integers(min_value=2**31, max_value=2**64 - 1),
                       st.just(MAX_HEADER_SIZE + 1)),
    body=st.binary(max_size=400),
    cut=st.integers(min_value=0, max_value=500),
)  # fmt: skip
def test_files_truncated_or_with_absurd_lengths(tmp_path, declared, body, cut):
    raw = (struct.pack("<Q", declared) + body)[:cut]
    p = tmp_path / "x.safetensors"
    p.write_bytes(raw)
    try:
        h = read_header(p)
    except HeaderError as e:
        assert e.file == "x.safetensors"
        return
    assert h.header_size == declared <= len(raw) - 8


HOSTILE = st.sampled_from(
    ["../escape.safetensors", "/etc/passwd", "..", ".", "", "sub/x.safetensors", "a\\b.safetensors", "x\x00y",
     "link.safetensors", "missing.safetensors", "model.safetensors", 5, None]
)  # fmt: skip


@settings(
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(names=st.lists(HOSTILE, min_size=1, max_size=4), extra=st.booleans())
def test_index_files_naming_hostile_paths(names, extra):
    """Planning refuses with a typed error; converting writes nothing anywhere but the output folder."""
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        src, outside = root / "src", root / "outside"
        src.mkdir()
        outside.mkdir()
        secret = outside / "secret.safetensors"
        body = json.dumps({"w": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}}).encode()
        secret.write_bytes(struct.pack("<Q", len(body)) + body + b"\x01\x02\x03\x04")
        (src / "model.safetensors").write_bytes(secret.read_bytes())
        os.symlink(secret, src / "link.safetensors")
        weight_map = {f"t{i}": n for i, n in enumerate(names)}
        if extra:
            weight_map["w"] = "model.safetensors"
        (src / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
        (src / "config.json").write_text('{"model_type": "mixtral"}')
        before = sorted(str(p) for p in root.rglob("*"))
        try:
            p = plan(src)
        except ConversionError:
            pass
        else:  # only a consistent, safe index gets here: every shard a plain file in the folder
            assert all(t.sources for t in p.tensors)
        with contextlib.suppress(ConversionError):
            convert(src, root / "out")
        after = sorted(str(p) for p in root.rglob("*"))
        assert [p for p in after if p not in before and not p.startswith(str(root / "out"))] == []
