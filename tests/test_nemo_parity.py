"""``converter.conversion_mapping`` against NeMo AutoModel 0.7's own ``conversion_mapping``, side by side.

NeMo (``pip install --no-deps nemo-automodel==0.7.0``) and transformers 5.23 are both imported here. For every
model type we register, and for the names of every tiny oracle checkpoint (``tiny_models``, published and grouped
layouts), NeMo's functions and ours are called alike and their answers fed to NeMo's renamer
(``_get_key_renaming_mapping``) and to transformers' (``rename_source_key``): ours must equal NeMo's wherever
NeMo's equals transformers', and transformers' elsewhere. Where ours cannot (a first-match dict without the model,
for names that need two unrelated renames; a NeMo code path that runs transformers' rules itself), the types are
listed below and in docs/nemo.md, and each list must be exactly what is measured. Then the oracle checkpoints are loaded through NeMo's
own conversion code with our module in place of NeMo's (bytes equal), and through transformers' ``from_pretrained``
with our rule objects in place of transformers' (bytes equal to the oracle).
"""

from __future__ import annotations

import glob
import inspect
import json
import logging
import os
import subprocess
import sys
import textwrap
import warnings
from functools import cache
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
nemo_cm = pytest.importorskip("nemo_automodel.components.checkpoint.conversion_mapping")
tm = pytest.importorskip("support.tiny_models")

from nemo_automodel.components.checkpoint import checkpointing as nemo_ckpt  # noqa: E402
from nemo_automodel.components.checkpoint._backports.hf_storage import _get_key_renaming_mapping  # noqa: E402
from safetensors import safe_open  # noqa: E402
from test_drift import EXPLAINED, _op_sig, _patterns, our_probes, transformers_probes  # noqa: E402
from transformers.conversion_mapping import get_checkpoint_conversion_mapping as tf_mapping  # noqa: E402
from transformers.conversion_mapping import get_model_conversion_mapping as tf_model_mapping  # noqa: E402
from transformers.core_model_loading import (  # noqa: E402
    WeightConverter,
    WeightRenaming,
    dot_natural_key,
    rename_source_key,
)

from converter import conversion_mapping as cm  # noqa: E402
from converter.errors import UnsupportedError  # noqa: E402
from converter.rules import LEGACY, REGISTRY, SUBMODELS, Convert, RenameGroup  # noqa: E402
from converter.rules.registry import build_ruleset  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TINY = sorted(tm.MODEL_TYPES)
TYPES = sorted(REGISTRY)
KEYS = sorted({*REGISTRY, *SUBMODELS, "legacy"})

# --- the documented differences (docs/nemo.md); each set must be exactly what the tests measure ------------------

#: registered types where NeMo's hand-written MODELS_REQUIRING_TENSOR_MERGING disagrees with transformers' rules
NEMO_MERGE_LIST_WRONG = frozenset({
    "afmoe", "axk1", "axk2", "bailing_hybrid", "beam", "cohere2_moe", "deepseek_ocr2", "deepseek_v32",
    "deepseek_v4", "dots3_note_vision_encoder", "ernie4_5_vl_moe", "exaone_moe", "flint", "glm4_moe_lite",
    "glm5_next", "glm5_next_text", "glm_moe_dsa", "gradium_phonon_tts", "gte", "hrm_text", "hy_v3", "inkling2",
    "inkling2_text", "inkling_mm_model", "jina_embeddings_v3", "kimi_k25", "kimi_linear", "kolibri1", "laguna",
    "mellum", "mimo_v2_flash", "minimax_m2", "minimax_m3_vl", "mistral_large4", "mistral_large4_text", "molmo2",
    "nemo_speechlm", "nemotron_h", "nomic_bert", "olmo_hybrid", "qianfan_ocr", "qwen3_5_moe",
    "qwen3_5_moe_text", "qwen3_omni_moe_text", "qwen3_omni_moe_thinker", "qwen4_exp_text", "radio", "sapiens2",
    "solar_open", "step3p5_vision", "step3p7", "tipsv2", "tipsv2_dpt", "unlimited_ocr",
})  # fmt: skip
#: types with names that need renames of unrelated parts (or an index offset): without a model, our first-match dict
#: renames those names partly (NeMo passes the model, or chains the dict through transformers; see docs/nemo.md)
FIRST_MATCH_PARTIAL = frozenset(
    {
        "deepseek_v4",
        "hy_v4",
        "inkling2",
        "inkling2_text",
        "kimi_k25",
        "minimax_m3_vl",
        "mistral_large4",
        "phimoe",
        "step3p7",
    }
)
#: oracle checkpoints (type, layout) that NeMo's tensor-merging path loads wrong whichever module: it runs
#: transformers' own rules without the loader's fall-back to a name that already is a parameter, and some of those
#: rules rename their own output again (``.norm.`` -> ``.kv_norm.`` also hits ``model.norm.weight``;
#: ``post_mlp_layernorm`` -> ``mlp.post_mlp_layernorm`` hits ``mlp.post_mlp_layernorm``)
NEMO_PATH_WRONG = frozenset(
    {("deepseek_v4", "published"), ("deepseek_v4", "grouped")}
    | {
        (t, "grouped")
        for t in ("axk1", "deepseek_ocr2", "ernie4_5_vl_moe", "inkling2_text", "laguna", "mistral_large4")
    }
)


# --- helpers -------------------------------------------------------------------------------------------------------


class Oracle:
    """A tiny model of one type, its published and grouped checkpoints and their names."""

    def __init__(self, model_type: str, root: Path) -> None:
        self.model_type = model_type
        self.model = tm.build_model(model_type)
        self.published, self.grouped = root / "published", root / "grouped"
        tm.save_published(self.model, self.published)
        tm.save_grouped(self.model, self.grouped)
        self.keys = set(self.model.state_dict())
        self.names = {
            layout: sorted(json.loads((d / "model.safetensors.index.json").read_text())["weight_map"])
            for layout, d in (("published", self.published), ("grouped", self.grouped))
        }
        self._expected: dict[str, torch.Tensor] | None = None

    @property
    def all_names(self) -> list[str]:
        return self.names["published"] + self.names["grouped"]

    @property
    def expected(self) -> dict[str, torch.Tensor]:
        """``from_pretrained(published).state_dict()``."""
        if self._expected is None:
            self._expected = tm.load_state_dict(self.published, self.model_type)
        return self._expected


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    built: dict[str, Oracle] = {}

    def get(model_type: str) -> Oracle:
        if model_type not in built:
            built[model_type] = Oracle(model_type, tmp_path_factory.mktemp(model_type))
        return built[model_type]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transformers.logging.set_verbosity_error()
        yield get


def split(rules: list[Any]) -> tuple[list[Any], list[Any]]:
    return [r for r in rules if isinstance(r, WeightRenaming)], [
        r for r in rules if isinstance(r, WeightConverter)
    ]


def loaded_names(
    rules: list[Any], names: list[str], keys: set[str] | None = None, *, renames_only: bool = False
) -> dict[str, tuple[str, Any]]:
    """What transformers' loader makes of each name with ``rules``: ``rename_source_key`` (every renaming, then
    at most one converter; keys in natural order), and, given the model's ``keys``, its fall-back to a name that
    already is a parameter. With the converter that matched, as its ops."""
    renamings, converters = split(rules)
    if renames_only:
        converters = []
    out = {}
    for name in sorted(names, key=dot_natural_key):
        new, source = rename_source_key(name, renamings, converters)
        if keys is not None and new not in keys and name in keys:
            new = name
        ops = None
        if source is not None:
            conv = next(c for c in converters if source in c.source_patterns)
            ops = tuple(_op_sig(o) for o in conv.operations)
        out[name] = (new, ops)
    return out


def first_match(mapping: Any, names: list[str]) -> dict[str, str]:
    return {n: _get_key_renaming_mapping(n, mapping) for n in names}


def our_chain(model_type: str) -> Any:
    """Our renames for a type, composed: what the combined key mapping compiles (config unknown)."""
    rules = [r for r in REGISTRY[model_type].rules if not isinstance(r, Convert)]
    return build_ruleset(model_type, rules)


def chain_probes(model_type: str) -> list[str]:
    """Names made from every pattern of a type: its own rules' (transformers' patterns and our templates), and
    nested sub-models' templates under their module paths."""
    names: set[str] = set()
    entry = REGISTRY[model_type]
    root = entry.root_class or model_type
    for t in tf_mapping(root) or []:
        for p in _patterns(t):
            names.update(transformers_probes(p))
    for r in entry.rules:
        members = r.renames if isinstance(r, RenameGroup) else [r]
        for m in members:
            templates = m.sources if isinstance(m, Convert) else [getattr(m, "source", None)]
            for tpl in templates:
                if tpl is None:
                    continue
                scope = getattr(m, "scope", "")
                names.update(f"{scope}.{n}" if scope else n for n in our_probes(tpl))
    return sorted(names)


def read_all(path: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in glob.glob(os.path.join(path, "*.safetensors")):
        with safe_open(f, framework="pt") as fh:
            for k in fh.keys():  # noqa: SIM118 - safe_open is not iterable
                out[k] = fh.get_tensor(k)
    return out


def nemo_load(module: Any, model: Any, path: Path) -> dict[str, torch.Tensor] | None:
    """NeMo 0.7's base-checkpoint load of an HF model without a state_dict_adapter (``Checkpointer.load_base_model``
    then ``load_model``), with ``module`` as its ``conversion_mapping``: the module says whether the type needs
    tensor merging and gives the key mapping (with the model unless it does, as NeMo calls it); the conversion is
    NeMo's own ``_convert_checkpoint_with_transformers`` or ``_apply_key_mapping``."""
    model_type = model.config.model_type
    merging = module.requires_tensor_merging(model_type)
    key_mapping = module.get_combined_key_mapping(
        model_type, getattr(model, "_checkpoint_conversion_mapping", None), model=None if merging else model
    )
    if merging:
        assert not callable(key_mapping), "NeMo refuses a callable key mapping for tensor merging"
        logging.disable(logging.WARNING)
        try:
            return nemo_ckpt._convert_checkpoint_with_transformers(model, str(path), key_mapping)
        finally:
            logging.disable(logging.NOTSET)
    state = read_all(path)
    return nemo_ckpt._apply_key_mapping(state, key_mapping) if key_mapping else state


def same_tensors(a: dict[str, torch.Tensor] | None, b: dict[str, torch.Tensor] | None) -> bool:
    if a is None or b is None or set(a) != set(b):
        return False
    return all(a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


def assert_same_tensors(got: dict[str, torch.Tensor] | None, want: dict[str, torch.Tensor]) -> None:
    assert got is not None
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
        assert torch.equal(got[k], want[k]), k


# --- the API -------------------------------------------------------------------------------------------------------

API = (
    "get_checkpoint_conversion_mapping",
    "get_combined_key_mapping",
    "get_model_conversion_mapping",
    "is_transformers_conversion_available",
    "requires_tensor_merging",
)


@pytest.mark.parametrize("name", API)
def test_same_signature_as_nemo(name):
    ours, theirs = inspect.signature(getattr(cm, name)), inspect.signature(getattr(nemo_cm, name))
    assert [(p.name, p.kind, p.default) for p in ours.parameters.values()] == [
        (p.name, p.kind, p.default) for p in theirs.parameters.values()
    ]


def test_module_names_are_nemos():
    assert cm._VLM_KEY_MAPPINGS == nemo_cm._VLM_KEY_MAPPINGS
    assert cm._TRANSFORMERS_AVAILABLE is nemo_cm._TRANSFORMERS_AVAILABLE is True
    assert cm.is_transformers_conversion_available() is nemo_cm.is_transformers_conversion_available() is True
    assert cm.WeightRenaming is nemo_cm.WeightRenaming and cm.WeightConverter is nemo_cm.WeightConverter
    assert isinstance(cm.MODELS_REQUIRING_TENSOR_MERGING, set)


def test_the_swap_is_one_line():
    code = textwrap.dedent(
        """
        import sys
        import converter.conversion_mapping
        sys.modules["nemo_automodel.components.checkpoint.conversion_mapping"] = converter.conversion_mapping
        from nemo_automodel.components.checkpoint import checkpointing
        assert checkpointing.get_combined_key_mapping is converter.conversion_mapping.get_combined_key_mapping
        assert checkpointing.requires_tensor_merging is converter.conversion_mapping.requires_tensor_merging
        print("swapped")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "swapped"


# --- requires_tensor_merging ---------------------------------------------------------------------------------------


@cache
def transformers_merges(model_type: str) -> bool:
    """Whether transformers' rules for the type (its own, then its nested sub-models', as test_drift checks the
    nesting) have a converter."""
    entry = REGISTRY[model_type]
    keys = [entry.root_class or model_type, *(n.key for n in entry.submodels)]
    return any(isinstance(r, WeightConverter) for k in keys for r in tf_mapping(k) or [])


def test_requires_tensor_merging_follows_transformers():
    assert {t for t in TYPES if cm.requires_tensor_merging(t) != transformers_merges(t)} == set()
    assert {t for t in TYPES if transformers_merges(t)} == cm.MODELS_REQUIRING_TENSOR_MERGING
    nemo_wrong = {t for t in TYPES if nemo_cm.requires_tensor_merging(t) != transformers_merges(t)}
    assert nemo_wrong == NEMO_MERGE_LIST_WRONG
    assert not cm.requires_tensor_merging("not_a_type") and not nemo_cm.requires_tensor_merging("not_a_type")


# --- get_checkpoint_conversion_mapping -----------------------------------------------------------------------------


def test_checkpoint_conversion_mapping_is_none_where_transformers_has_none():
    for key in [*KEYS, "not_a_type", "LlamaForCausalLM"]:
        assert (cm.get_checkpoint_conversion_mapping(key) is None) == (
            nemo_cm.get_checkpoint_conversion_mapping(key) is None
        ), key


@pytest.mark.parametrize("key", [k for k in KEYS if tf_mapping(k) is not None])
def test_checkpoint_conversion_mapping_renames_like_transformers(key):
    ours = cm.get_checkpoint_conversion_mapping(key)
    assert ours is not cm.get_checkpoint_conversion_mapping(key)  # a new list of new objects each call
    assert all(isinstance(r, (WeightRenaming, WeightConverter)) for r in ours)
    origin: dict[str, str] = {}
    for t in tf_mapping(key):
        for p in _patterns(t):
            for n in transformers_probes(p):
                origin.setdefault(n, p)
    for r in (
        REGISTRY[key].root_rules if key in REGISTRY else SUBMODELS[key].rules if key in SUBMODELS else LEGACY
    ):
        for m in r.renames if isinstance(r, RenameGroup) else [r]:
            for tpl in m.sources if isinstance(m, Convert) else [m.source]:
                for n in our_probes(tpl):
                    origin.setdefault(n, tpl)
    names = sorted(origin)
    theirs = loaded_names(nemo_cm.get_checkpoint_conversion_mapping(key), names)
    mine = loaded_names(ours, names)
    unexplained = {
        n: (theirs[n], mine[n]) for n in names if theirs[n] != mine[n] and (key, origin[n]) not in EXPLAINED
    }
    assert unexplained == {}


# --- get_model_conversion_mapping ----------------------------------------------------------------------------------


@pytest.mark.parametrize("model_type", TINY)
def test_model_conversion_mapping_renames_like_transformers(oracle, model_type):
    o = oracle(model_type)
    ours = cm.get_model_conversion_mapping(o.model)
    assert ours and all(isinstance(r, (WeightRenaming, WeightConverter)) for r in ours)
    theirs = nemo_cm.get_model_conversion_mapping(o.model)
    assert loaded_names(ours, o.all_names, o.keys) == loaded_names(theirs, o.all_names, o.keys)
    # ours leave a name that already is in the model layout alone, without transformers' fall-back
    unchanged = loaded_names(cm.get_model_conversion_mapping(o.model), o.names["grouped"])
    assert {n: new for n, (new, _) in unchanged.items() if new != n} == {}


def test_model_conversion_mapping_takes_a_config_or_its_path(tmp_path):
    cfg = {"model_type": "llava", "vision_config": {"model_type": "siglip_vision_model"}}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    name = "vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight"
    for arg in (cfg, tmp_path, tmp_path / "config.json", str(tmp_path)):
        rules = cm.get_model_conversion_mapping(arg, key_mapping={"^x": "y"})
        assert rules[0].source_patterns == ["^x"] and rules[0].target_patterns == ["y"]
        assert loaded_names(rules, [name])[name][0] == "model.vision_tower.encoder.layers.0.mlp.fc1.weight"
    pixtral = {"model_type": "mistral3", "vision_config": {"model_type": "pixtral"}}
    rules = cm.get_model_conversion_mapping(pixtral, add_legacy=False)
    assert (
        loaded_names(rules, [name])[name][0]
        == "model.vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight"
    )


def test_model_conversion_mapping_with_an_fp8_quantization_config():
    cfg = {"model_type": "qwen3_moe"}
    kept = cm.get_model_conversion_mapping(cfg, hf_quantizer={"quant_method": "fp8"}, add_legacy=False)
    assert kept[0].target_patterns == ["\\1weight_scale_inv"]  # the quantizer's renames come first
    names = [
        "model.layers.0.mlp.experts.3.gate_proj.weight_scale_inv",
        "model.layers.0.self_attn.q_proj.scale",
    ]
    got = loaded_names(kept, names)
    assert got[names[0]][0] == "model.layers.0.mlp.experts.gate_up_proj_scale_inv"
    assert got[names[1]][0] == "model.layers.0.self_attn.q_proj.weight_scale_inv"
    deq = cm.get_model_conversion_mapping(cfg, hf_quantizer={"quant_method": "fp8", "dequantize": True})
    assert loaded_names(deq, names[:1])[names[0]][1] is None  # no scale-grid converter when dequantizing
    with pytest.raises(UnsupportedError, match="gptq"):
        cm.get_model_conversion_mapping(cfg, hf_quantizer={"quant_method": "gptq"})


# --- get_combined_key_mapping --------------------------------------------------------------------------------------


def test_combined_key_mapping_takes_the_models_mapping_first():
    for module in (cm, nemo_cm):
        km = module.get_combined_key_mapping("phimoe", {r"^foo\.": "bar."})
        assert list(km)[0] == r"^foo\." and km[r"^foo\."] == "bar."
        assert (
            _get_key_renaming_mapping("foo.block_sparse_moe.gate.weight", km)
            == "bar.block_sparse_moe.gate.weight"
        )
        assert module.get_combined_key_mapping("qwen2_moe") is None  # converters only
        assert module.get_combined_key_mapping("gemma3") == nemo_cm._VLM_KEY_MAPPINGS["gemma3"]


def first_match_misses(names: list[str], truth: dict[str, str], ours: Any, theirs: Any) -> dict[str, Any]:
    """Checks ours against NeMo's and the truth on ``names``; returns the names ours renames differently from
    the truth, which only a type in FIRST_MATCH_PARTIAL may have. Ours must never be wrong where NeMo's is
    right, and must leave the truth's names alone."""
    mine, nemos = first_match(ours, names), first_match(theirs, names)
    worse = {n: (truth[n], mine[n]) for n in names if nemos[n] == truth[n] and mine[n] != truth[n]}
    assert worse == {}
    wrong = {n: (truth[n], mine[n]) for n in names if mine[n] != truth[n]}
    out = sorted({truth[n] for n in names if n not in wrong})
    assert {n: new for n, new in first_match(ours, out).items() if new != n} == {}
    return wrong


def probe_truth(model_type: str) -> tuple[list[str], dict[str, str]]:
    """Names made from a type's patterns, and what our chained renames make of them (test_drift holds those
    equal to transformers'), where renaming the result again changes nothing."""
    chain = our_chain(model_type)
    names = chain_probes(model_type)
    truth = {n: chain.rename(n) for n in names}
    return [n for n in names if chain.rename(truth[n]) == truth[n]], truth


def oracle_truth(o: Oracle) -> dict[str, str]:
    """transformers' renaming of the oracle's names (no converter), its loader's fall-back included."""
    names = loaded_names(tf_model_mapping(o.model), o.all_names, o.keys, renames_only=True)
    return {n: new for n, (new, _) in names.items()}


@pytest.mark.parametrize("model_type", TYPES)
def test_combined_key_mapping_without_a_model(model_type):
    """Every registered type, on names made from its patterns."""
    ours, theirs = cm.get_combined_key_mapping(model_type), nemo_cm.get_combined_key_mapping(model_type)
    assert ours is None or isinstance(ours, dict)
    assert theirs is None or ours is not None  # NeMo's is None for types transformers keys by class
    if model_type in nemo_cm._VLM_KEY_MAPPINGS:  # NeMo's own mapping, as NeMo: checked on the oracle's names
        assert ours == theirs
        return
    wrong = first_match_misses(*probe_truth(model_type), ours, theirs)
    assert not wrong or model_type in FIRST_MATCH_PARTIAL, wrong


@pytest.mark.parametrize("model_type", TINY)
@pytest.mark.parametrize("with_model", [False, True], ids=["no-model", "model"])
def test_combined_key_mapping_on_oracle_names(oracle, model_type, with_model):
    """The oracle's names, both layouts, against transformers' own renaming of them. With the model, ours is a
    callable exactly where NeMo's is, and exact (NeMo passes the model for types without tensor merging)."""
    o = oracle(model_type)
    model = o.model if with_model else None
    ours = cm.get_combined_key_mapping(model_type, None, model=model)
    theirs = nemo_cm.get_combined_key_mapping(model_type, None, model=model)
    assert callable(ours) == callable(theirs)
    assert isinstance(ours, dict) or callable(ours) or ours is None
    wrong = first_match_misses(o.all_names, oracle_truth(o), ours, theirs)
    if with_model:
        assert wrong == {}
    assert not wrong or model_type in FIRST_MATCH_PARTIAL, wrong


def test_first_match_partial_lists_only_types_that_are(oracle):
    """Each type in FIRST_MATCH_PARTIAL still has a name ours (without a model) renames partly."""
    for model_type in sorted(FIRST_MATCH_PARTIAL):
        ours, theirs = cm.get_combined_key_mapping(model_type), nemo_cm.get_combined_key_mapping(model_type)
        wrong = first_match_misses(*probe_truth(model_type), ours, theirs)
        if not wrong and model_type in TINY:
            o = oracle(model_type)
            wrong = first_match_misses(o.all_names, oracle_truth(o), ours, theirs)
        assert wrong, model_type


@pytest.mark.parametrize("model_type", [t for t in TINY if cm.requires_tensor_merging(t)])
def test_combined_key_mapping_as_transformers_key_mapping(oracle, model_type):
    """For a type that needs tensor merging NeMo hands the dict to transformers as ``key_mapping`` (ahead of
    transformers' own rules): ours leaves transformers' renaming exactly as without it."""
    o = oracle(model_type)
    alone = loaded_names(tf_model_mapping(o.model), o.all_names)
    ours = cm.get_combined_key_mapping(model_type)
    assert loaded_names(tf_model_mapping(o.model, key_mapping=ours), o.all_names) == alone


# --- loading the oracle checkpoints --------------------------------------------------------------------------------


@pytest.mark.parametrize("model_type", TINY)
def test_nemo_loads_like_with_its_own_module(oracle, model_type):
    """NeMo's own loading code with our module in place of NeMo's, both layouts: the same state dict wherever
    NeMo's module loads the oracle right, and the oracle's state dict everywhere but NEMO_PATH_WRONG."""
    o = oracle(model_type)
    for layout, path in (("published", o.published), ("grouped", o.grouped)):
        nemos, ours = nemo_load(nemo_cm, o.model, path), nemo_load(cm, o.model, path)
        if same_tensors(nemos, o.expected):
            assert_same_tensors(ours, nemos)
        if (model_type, layout) in NEMO_PATH_WRONG:
            assert not same_tensors(ours, o.expected) and not same_tensors(nemos, o.expected)
        else:
            assert_same_tensors(ours, o.expected)


@pytest.mark.parametrize("model_type", TINY)
def test_transformers_loads_with_our_rule_objects(oracle, model_type):
    """``from_pretrained`` with our ``get_model_conversion_mapping`` in place of transformers': the oracle's
    state dict, bit for bit (ops, nested scopes, legacy renames all run by transformers itself)."""
    o = oracle(model_type)
    with mock.patch(
        "transformers.modeling_utils.get_model_conversion_mapping", cm.get_model_conversion_mapping
    ):
        got = tm.load_state_dict(o.published, model_type)
    assert_same_tensors(got, o.expected)


@pytest.mark.parametrize("kind", ["fp8_deepseek_v3", "fp8_qwen3_moe"])
def test_transformers_dequantizes_fp8_with_our_rule_objects(tmp_path, kind):
    """A real FP8 quantizer's ``update_weight_conversions`` on our converters: dequantize, then merge experts."""
    expected = tm.build_quantized(kind, tmp_path)
    with mock.patch(
        "transformers.modeling_utils.get_model_conversion_mapping", cm.get_model_conversion_mapping
    ):
        got = tm.load_state_dict(tmp_path, kind.split("_", 1)[1])
    assert_same_tensors(got, expected)


# --- the documentation ---------------------------------------------------------------------------------------------


def test_docs_name_every_documented_difference():
    doc = (ROOT / "docs" / "nemo.md").read_text()
    documented = NEMO_MERGE_LIST_WRONG | FIRST_MATCH_PARTIAL | {t for t, _ in NEMO_PATH_WRONG}
    assert [t for t in sorted(documented) if f"`{t}`" not in doc] == []
    readme = (ROOT / "README.md").read_text()
    assert "## Drop-in for NeMo AutoModel" in readme and "docs/nemo.md" in readme
    assert 'sys.modules["nemo_automodel.components.checkpoint.conversion_mapping"]' in readme


# --- without transformers ------------------------------------------------------------------------------------------

WITHOUT_TRANSFORMERS = """
import json, sys
sys.modules["transformers"] = None  # `import transformers` now raises ImportError
import converter
from converter import conversion_mapping as cm
from converter.rules import Convert, Rename
assert cm.is_transformers_conversion_available() is False
assert cm._TRANSFORMERS_AVAILABLE is False and cm.WeightRenaming is None and cm.WeightConverter is None
mixtral = cm.get_checkpoint_conversion_mapping("mixtral")
assert [type(r).__name__ for r in mixtral] == ["Rename", "Convert", "Convert"], mixtral
assert cm.get_checkpoint_conversion_mapping("qwen2_vl") is None
rules = cm.get_model_conversion_mapping({"model_type": "mixtral"}, key_mapping={"^x": "y"})
assert type(rules[0]).__name__ == "RegexRename" and any(isinstance(r, Convert) for r in rules)
assert cm.requires_tensor_merging("mixtral") and not cm.requires_tensor_merging("llava")
print(json.dumps(cm.get_combined_key_mapping("llava")))
"""


def test_without_transformers_our_rule_objects():
    out = subprocess.run(
        [sys.executable, "-c", WITHOUT_TRANSFORMERS], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout) == cm.get_combined_key_mapping("llava")  # the dict needs no transformers


def test_importing_converter_does_not_import_transformers():
    code = "import sys, converter, converter.conversion_mapping; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"
