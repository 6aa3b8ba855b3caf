"""transformers' ``"legacy"`` renames, appended last to every model's rules. One-way: the reverse direction
leaves them out (a ``LayerNorm.weight`` is not turned back into ``gamma``)."""

from .core import Rename

LEGACY: list[Rename] = [
    Rename("LayerNorm.gamma", "LayerNorm.weight", reversible=False),
    Rename("LayerNorm.beta", "LayerNorm.bias", reversible=False),
    Rename("weight_g", "parametrizations.weight.original0", reversible=False),
    Rename("weight_v", "parametrizations.weight.original1", reversible=False),
    # checkpoints saved with a duplicated `.model.model` by transformers v5.10-v5.23 (#45534)
    Rename("^model.language_model.model", "^model.language_model", reversible=False),
    Rename("^language_model.model.model", "^model.language_model", reversible=False),
]
