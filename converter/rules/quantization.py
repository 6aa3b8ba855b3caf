"""Pre-quantized checkpoints (``quantization_config`` in config.json): what transformers' quantizers add to the
rules, and dequantization.

* FP8 block-scaled (``quant_method: fp8``; DeepSeek-V3 / Qwen3 style ``weight`` in float8_e4m3fn +
  ``weight_scale_inv`` grid). Kept by default: every converter whose sources are ``.weight`` tensors gets a copy
  for the scale grids (``...weight_scale_inv`` -> ``gate_up_proj_scale_inv``), merged exactly like the weights,
  as transformers' ``update_weight_conversions`` does. Two renames run first (``.scale`` and ``.qscale_weight`` ->
  ``.weight_scale_inv``, DeepSeek-V4-Flash and Mistral-Large-4 style), one-way.
* MXFP4 (``quant_method: mxfp4``; gpt_oss ``*_blocks`` / ``*_scales``): kept as is by default.

With ``dequantize``, each quantized tensor becomes a computed tensor before any rule runs, one block row / one
expert at a time (:func:`~converter.kernels.fp8_dequantize`, :func:`~converter.kernels.mxfp4_dequantize`),
bit for bit what transformers' ``Fp8Dequantize`` / ``Mxfp4Dequantize`` produce; the output config.json then
drops ``quantization_config``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import UnsupportedError
from ..kernels import fp8_dequantize, mxfp4_dequantize
from ..layout import VirtualTensor
from .core import Convert, Rename

#: quant_method values this library converts
SUPPORTED_METHODS = ("fp8", "mxfp4")
FP8_WEIGHT_DTYPES = ("F8_E4M3", "F8_E5M2", "I8")


@dataclass(frozen=True)
class Quantization:
    """A checkpoint's ``quantization_config``, as far as conversion cares."""

    method: str
    config: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, **dict(self.config)}


def quantization_of(config: Mapping[str, Any] | None) -> Quantization | None:
    """``config.json``'s quantization, or None. Other methods (GPTQ, AWQ, bitsandbytes...) are refused."""
    qc = config.get("quantization_config") if config else None
    if not qc:
        return None
    method = qc.get("quant_method") if isinstance(qc, Mapping) else None
    if method not in SUPPORTED_METHODS:
        raise UnsupportedError(
            f"pre-quantized checkpoints with quant_method {method!r} are not supported "
            f"(supported: {', '.join(SUPPORTED_METHODS)})",
            key=str(method),
            file="config.json",
        )
    return Quantization(method, qc)


def fp8_renames(names: Iterable[str]) -> tuple[Rename, ...]:
    """transformers' FP8 quantizer renames, run before the model's: ``x.scale`` (DeepSeek-V4-Flash) and
    ``x.qscale_weight`` (Mistral-Large-4) -> ``x.weight_scale_inv``. The first is left out for checkpoints with
    ``*_l2_clip.scale`` parameters (Inkling), as transformers does. One-way."""
    scale = Rename("scale", "weight_scale_inv", reversible=False, note="FP8: per-block scales under `.scale`")
    qscale = Rename(
        "qscale_weight", "weight_scale_inv", reversible=False, note="FP8: Mistral `qscale_weight`"
    )
    l2_clip = any(
        len(p := n.split(".")) >= 2 and p[-1] == "scale" and p[-2].endswith("_l2_clip") for n in names
    )
    return (qscale,) if l2_clip else (scale, qscale)


def fp8_scale_converters(converters: Iterable[Convert]) -> list[Convert]:
    """Each converter, followed by its copy for the scale grids when all its sources are ``.weight`` tensors."""
    out: list[Convert] = []
    for c in converters:
        out.append(c)
        if all(s == "weight" or s.endswith(".weight") for s in c.sources):
            out.append(c.with_suffix("_scale_inv"))
    return out


def check_fp8_scales_follow(tensors: Iterable[Any], rules: Any) -> None:
    """A kept FP8 weight that a converter reshapes must have its scale grid converted alike: only converters of
    ``.weight`` tensors get a scale copy (as in transformers), so e.g. a transposed fused FP8 tensor would leave its
    grid behind, silently wrong. Refused; ``--dequantize`` handles it."""
    twins = {(c.sources, c.ops) for c in rules.converters}
    for t in tensors:
        if t.how != "convert" or t.dtype not in FP8_WEIGHT_DTYPES or t.rule is None:
            continue
        conv = rules.converters[t.rule]
        if (tuple(s + "_scale_inv" for s in conv.sources), conv.ops) not in twins:
            raise UnsupportedError(
                f"{t.name}: a kept FP8 tensor converted by {list(conv.sources)} -> {list(conv.targets)}, whose scale "
                "grid cannot follow it; convert with --dequantize",
                key=t.name,
            )


def dequantize_tensors(
    tensors: Mapping[str, VirtualTensor],
    quantization: Quantization,
    dtype: str,
    *,
    names_for_pairing: Mapping[str, str] | None = None,
) -> dict[str, VirtualTensor]:
    """Replace each quantized tensor and its companions by its dequantized value (a computed tensor).

    FP8: a float8 (or int8-packed FP4) tensor ``N`` with a ``N_scale_inv`` sibling -> ``N`` in ``dtype``; its
    ``activation_scale`` sibling is dropped. MXFP4: ``N_blocks`` + ``N_scales`` -> ``N`` in ``dtype``, shaped
    ``[E, in, out]``. ``names_for_pairing`` maps a name to the one used to find its sibling (after the FP8 scale
    renames)."""
    pairing = names_for_pairing or {}
    by_pair_name = {pairing.get(n, n): n for n in tensors}
    out = dict(tensors)
    if quantization.method == "fp8":
        for name, vt in tensors.items():
            key = pairing.get(name, name)
            scale = by_pair_name.get(key + "_scale_inv")
            if vt.dtype not in FP8_WEIGHT_DTYPES or scale is None:
                continue
            out[name] = fp8_dequantize(vt, tensors[scale], dtype, name)
            del out[scale]
            head = key.rpartition(".")[0]
            act = by_pair_name.get(f"{head}.activation_scale" if head else "activation_scale")
            if act is not None and key.endswith("weight"):
                out.pop(act, None)
        return out
    for name, vt in tensors.items():
        if not name.endswith("_blocks") or name[: -len("_blocks")] + "_scales" not in tensors:
            continue
        base = name[: -len("_blocks")]
        out[base] = mxfp4_dequantize(vt, tensors[base + "_scales"], dtype, base)
        del out[name], out[base + "_scales"]
    return out


def dequantized_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The output config.json of a dequantized conversion: the same, without ``quantization_config``."""
    return {k: v for k, v in config.items() if k != "quantization_config"}


__all__ = [
    "FP8_WEIGHT_DTYPES",
    "SUPPORTED_METHODS",
    "Quantization",
    "check_fp8_scales_follow",
    "dequantize_tensors",
    "dequantized_config",
    "fp8_renames",
    "fp8_scale_converters",
    "quantization_of",
]
