"""Oracle tests: our conversion of a tiny random checkpoint equals transformers 5.23's ``from_pretrained``,
bit for bit, for every registered model type that ``tiny_models`` can build; and back again.

For each model type (a tiny random model saved in the published Hub layout, many shards):
  forward   our output == ``from_pretrained(published).state_dict()`` (names, dtypes, shapes, bytes),
            and transformers loads our output to the same state dict;
  reverse   converting our output back gives the published tensors exactly;
  grouped   transformers' own ``save_pretrained(save_original_format=False)`` plans to a no-op forward, and
            converts back to the published tensors.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
tm = pytest.importorskip("tiny_models")  # needs transformers (a dev dependency)

from helpers import assert_same_tensors, read_tensors  # noqa: E402

from converter import convert, plan  # noqa: E402
from converter.rules import REGISTRY  # noqa: E402

MODEL_TYPES = sorted(t for t in tm.MODEL_TYPES if t in REGISTRY and REGISTRY[t].unsupported is None)


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """Built lazily, once per model type: (published dir, expected state dict, model)."""
    built = {}

    def get(model_type):
        if model_type not in built:
            root = tmp_path_factory.mktemp(model_type)
            model = tm.build_model(model_type)
            tm.save_published(model, root / "published")
            want = tm.load_state_dict(root / "published", model_type)
            built[model_type] = (root, want, model)
        return built[model_type]

    return get


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_forward_equals_from_pretrained(cases, model_type):
    root, want, _ = cases(model_type)
    out = root / "ours"
    result = convert(root / "published", out)
    assert not result.noop
    assert_same_tensors(read_tensors(out), want)
    # transformers reads our output as is (no conversion left to do) and gets the same weights
    assert_same_tensors(tm.load_state_dict(out, model_type), want)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_reverse_round_trip(cases, model_type):
    root, _, _ = cases(model_type)
    if not (root / "ours").exists():
        convert(root / "published", root / "ours")
    convert(root / "ours", root / "back", direction="reverse")
    assert_same_tensors(read_tensors(root / "back"), read_tensors(root / "published"))


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_transformers_grouped_save(cases, model_type):
    root, _, model = cases(model_type)
    tm.save_grouped(model, root / "grouped")
    assert plan(root / "grouped").is_noop
    convert(root / "grouped", root / "grouped_back", direction="reverse")
    assert_same_tensors(read_tensors(root / "grouped_back"), read_tensors(root / "published"))


@pytest.mark.parametrize("model_type", MODEL_TYPES)
@pytest.mark.parametrize("dtype", ["fp16", "fp32"])
def test_dtype_cast_equals_from_pretrained_dtype(cases, model_type, dtype):
    """``--dtype`` casts like ``from_pretrained(dtype=...)``, keeping the params transformers keeps in fp32."""
    root, _, _ = cases(model_type)
    out = root / f"cast_{dtype}"
    convert(root / "published", out, dtype=dtype)
    want = tm.load_state_dict(
        root / "published", model_type, dtype={"fp16": torch.float16, "fp32": torch.float32}[dtype]
    )
    assert_same_tensors(read_tensors(out), want)
