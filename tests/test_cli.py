"""The ckpt-convert command, run as a user would (a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys

from support.helpers import (
    MIXTRAL_CONFIG,
    assert_same_tensors,
    mixtral_tensors,
    read_tensors,
    write_checkpoint,
)


def cli(*args, ok=True):
    p = subprocess.run(
        [sys.executable, "-m", "converter.cli", *map(str, args)], capture_output=True, text=True, timeout=120
    )
    if ok:
        assert p.returncode == 0, p.stderr + p.stdout
    return p


def test_demo_round_trips(tmp_path):
    p = cli("demo", "--workdir", tmp_path)
    assert "identical to the original, bit for bit" in p.stdout
    assert "verified: 39 tensors" in p.stdout
    assert (tmp_path / "grouped" / "config.json").exists()


def test_convert_prints_a_summary_and_writes_the_output(tmp_path):
    t = mixtral_tensors()
    write_checkpoint(tmp_path / "src", t, config=MIXTRAL_CONFIG)
    p = cli("convert", tmp_path / "src", tmp_path / "out", "--verify")
    assert "mixtral (forward)" in p.stdout and "4 convert" in p.stdout and "verified" in p.stdout
    p = cli("convert", tmp_path / "out", tmp_path / "back", "--reverse", "--json")
    summary = json.loads(p.stdout)
    assert summary["direction"] == "reverse" and summary["tensors_out"] == len(t)
    assert_same_tensors(read_tensors(tmp_path / "back"), t)


def test_convert_error_is_one_clear_line_and_exit_1(tmp_path):
    t = mixtral_tensors()
    del t["model.layers.1.block_sparse_moe.experts.0.w2.weight"]
    write_checkpoint(tmp_path / "src", t, config=MIXTRAL_CONFIG)
    p = cli("convert", tmp_path / "src", tmp_path / "out", ok=False)
    assert p.returncode == 1
    assert "MissingExpertError" in p.stderr and "expert 0 is missing" in p.stderr
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "out").exists()


def test_dry_run_and_plan_write_nothing(tmp_path):
    write_checkpoint(tmp_path / "src", mixtral_tensors(), config=MIXTRAL_CONFIG)
    p = cli("convert", tmp_path / "src", tmp_path / "out", "--dry-run")
    assert "dry run" in p.stdout and not (tmp_path / "out").exists()
    doc = json.loads(cli("plan", tmp_path / "src", "--json", "--pieces").stdout)
    gu = [t for s in doc["shards"] for t in s["tensors"] if t["name"].endswith("gate_up_proj")]
    assert len(gu) == 2 and gu[0]["pieces"][0]["file"].endswith(".safetensors")
    assert "4 tensor(s) change" not in cli("plan", tmp_path / "src").stdout  # renames count too
    assert "gate_up_proj" in cli("plan", tmp_path / "src").stdout


def test_noop_says_so(tmp_path):
    write_checkpoint(tmp_path / "src", mixtral_tensors(), config=MIXTRAL_CONFIG)
    cli("convert", tmp_path / "src", tmp_path / "grouped")
    p = cli("convert", tmp_path / "grouped", tmp_path / "again")
    assert "nothing to convert" in p.stdout and "already in the forward layout" in p.stdout
    # exit 0 means OUT holds the checkpoint: the grouped files, hard-linked
    for f in (tmp_path / "grouped").iterdir():
        assert (tmp_path / "again" / f.name).read_bytes() == f.read_bytes()
        if f.name.endswith(".safetensors"):
            assert (tmp_path / "again" / f.name).stat().st_ino == f.stat().st_ino


def test_rules_listing_and_detail():
    rows = json.loads(cli("rules", "--json").stdout)
    mix = next(r for r in rows if r["model_type"] == "mixtral")
    assert mix["requires_tensor_merging"] and mix["ops"] == ["concat", "stack"] and mix["supported"]
    detail = json.loads(cli("rules", "mixtral", "--json").stdout)
    assert detail["rules"][0] == {"kind": "rename", "source": "block_sparse_moe", "target": "mlp"}
    human = cli("rules", "mixtral").stdout
    assert "stack experts on dim 0, then concatenate on dim 1" in human
    rev = json.loads(cli("rules", "mixtral", "--reverse", "--json").stdout)
    assert rev["rules"][0]["kind"] == "convert" and rev["rules"][-1]["target"] == "block_sparse_moe"


def test_bad_arguments_exit_2(tmp_path):
    assert cli("convert", ok=False).returncode == 2
    assert cli("rules", "nope", ok=False).returncode == 1
    write_checkpoint(tmp_path / "src", mixtral_tensors(), config=MIXTRAL_CONFIG)
    p = cli("convert", tmp_path / "src", tmp_path / "o", "--max-shard-size", "lots", ok=False)
    assert p.returncode == 2 and "cannot read size" in p.stderr


def test_byte_copy_path_never_imports_torch(tmp_path):
    """Start-up counts: stacking and concatenating are byte copies and must not import torch."""
    write_checkpoint(tmp_path / "src", mixtral_tensors(), config=MIXTRAL_CONFIG)
    code = (
        "import sys; from converter import convert; from converter.cli import main; "
        f"convert({str(tmp_path / 'src')!r}, {str(tmp_path / 'out')!r}); "
        f"main(['plan', {str(tmp_path / 'src')!r}, '--json']); "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr


def test_plan_json_into_a_file_imports_only_what_the_plan_needs(tmp_path):
    """`ckpt-convert plan SRC --json > file` is on the path of every conversion script: no rich (its JSON is the
    same text rich writes), no torch, no family module but the checkpoint's, no executor."""
    write_checkpoint(tmp_path / "src", mixtral_tensors(), config=MIXTRAL_CONFIG)
    code = (
        "import sys, io; from service.cli import main; sys.stdout = io.StringIO(); "
        f"main(['plan', {str(tmp_path / 'src')!r}, '--json']); doc = sys.stdout.getvalue(); "
        "sys.stdout = sys.__stdout__; "
        "mods = [m for m in sys.modules if m.split('.')[0] in ('rich', 'torch', 'converter')]; "
        "import json; print(json.dumps({'doc': json.loads(doc), 'text': doc, 'mods': mods}))"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["text"] == json.dumps(r["doc"], indent=2, ensure_ascii=False) + "\n"
    assert r["doc"]["model_type"] == "mixtral" and r["doc"]["counts"]["convert"] == 4
    mods = set(r["mods"])
    assert not {m for m in mods if m.split(".")[0] in ("rich", "torch")}
    assert "converter.executor" not in mods and "converter.conversion_mapping" not in mods
    assert {m for m in mods if m.startswith("converter.rules.")} >= {"converter.rules.mixtral"}
    assert "converter.rules.vlm" not in mods
