"""Oracle tests: our conversion of a tiny random checkpoint equals transformers 5.23's ``from_pretrained``,
bit for bit, for every registered model type that ``tiny_models`` can build; and back again.

For each model type (a tiny random model saved in the published Hub layout, many shards):
  forward   our output == ``from_pretrained(published).state_dict()`` (names, dtypes, shapes, bytes),
            and transformers loads our output to the same state dict (a type whose published layout already is
            the model layout, e.g. gpt_oss, plans to a no-op);
  reverse   converting our output back gives the published tensors exactly;
  grouped   transformers' own ``save_pretrained(save_original_format=False)`` plans to a no-op forward, and
            converts back to the published tensors;
  dtype     ``--dtype fp16/fp32`` equals ``from_pretrained(dtype=...)``.

A model type that ``tiny_models`` builds but the registry marks unsupported must be refused, never converted.
"""

from __future__ import annotations

import re

import pytest

torch = pytest.importorskip("torch")
tm = pytest.importorskip("support.tiny_models")  # needs transformers (a dev dependency)

from support.helpers import assert_same_tensors, read_tensors  # noqa: E402

from converter import convert, plan  # noqa: E402
from converter.errors import UnsupportedError  # noqa: E402
from converter.preview import preview  # noqa: E402
from converter.rules import get_entry  # noqa: E402

#: every buildable type we convert (or that needs no conversion), and composites whose text model converts
#: (``llava+mixtral``: model_type llava in config.json, ``text_config.model_type`` mixtral)
MODEL_TYPES = sorted(t for t in tm.MODEL_TYPES if get_entry(t).unsupported is None) + list(tm.COMPOSITES)
REFUSED = sorted(t for t in tm.MODEL_TYPES if get_entry(t).unsupported is not None)


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """Built lazily, once per model type: (folder, expected state dict, model); ``folder/ours`` is our output."""
    built = {}

    def get(model_type):
        if model_type not in built:
            root = tmp_path_factory.mktemp(model_type)
            model = tm.build_model(model_type)
            tm.save_published(model, root / "published")
            want = tm.load_state_dict(root / "published", model_type)
            convert(root / "published", root / "ours")
            built[model_type] = (root, want, model)
        return built[model_type]

    return get


def test_every_buildable_model_type_is_known():
    assert [get_entry(t).model_type for t in tm.MODEL_TYPES] == list(tm.MODEL_TYPES)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_forward_equals_from_pretrained(cases, model_type):
    root, want, _ = cases(model_type)
    published = read_tensors(root / "published")
    # no-op exactly when the published layout already is the model layout (gpt_oss, llama4_text)
    same = set(published) == set(want) and all(
        (published[k].dtype, published[k].shape) == (w.dtype, w.shape) for k, w in want.items()
    )
    assert plan(root / "published").is_noop == same
    assert_same_tensors(read_tensors(root / "ours"), want)
    # transformers reads our output as is (no conversion left to do) and gets the same weights
    assert_same_tensors(tm.load_state_dict(root / "ours", model_type), want)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_reverse_round_trip(cases, model_type):
    root, _, _ = cases(model_type)
    convert(root / "ours", root / "back", direction="reverse")
    assert_same_tensors(read_tensors(root / "back"), read_tensors(root / "published"))


def _names(template: str, name: str) -> bool:
    """Whether a preview target (``*`` for an expert index) names ``name``."""
    return re.fullmatch(re.escape(template).replace(r"\*", r"\d+"), name) is not None


@pytest.mark.parametrize("model_type", MODEL_TYPES)
@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_preview_names_what_the_planner_writes(cases, model_type, direction):
    """On the oracle's names, each source tensor previews to the outputs the planner makes of it, both ways."""
    root, _, _ = cases(model_type)
    p = plan(root / ("published" if direction == "forward" else "ours"), direction=direction)
    shown = {
        e["source"]: e
        for e in preview(list(p.source_index.tensors), p.model_type, direction=direction, config=p.config)
    }
    assert sorted(shown) == sorted(p.source_index.tensors)
    made: dict[str, list] = {}
    for t in p.tensors:
        for s in t.sources:
            made.setdefault(s, []).append(t)
    assert sorted(made) == sorted(shown)  # every source tensor goes somewhere (the oracle drops none)
    for source, outputs in made.items():
        e = shown[source]
        for t in outputs:
            assert any(_names(x, t.name) for x in e["targets"]), (source, t.name, e["targets"])
            if e["rule"] is None:  # a rename or a copy: the same name and the same word for it
                assert [t.how] == [e["how"]] and e["targets"] == [t.name]
            else:
                assert t.rule is not None and p.ruleset.converters[t.rule].to_dict() == e["rule"]


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


@pytest.mark.parametrize("model_type", REFUSED)
def test_unsupported_types_are_refused(tmp_path, model_type):
    model = tm.build_model(model_type)
    tm.save_published(model, tmp_path / "published")
    with pytest.raises(UnsupportedError, match=model_type):
        plan(tmp_path / "published")
