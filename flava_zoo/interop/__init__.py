"""Converters from other libraries' weight layouts to flava-zoo's.

Each converter needs only torch to map a state dict; the library it converts from is
imported lazily, and only by the helpers that take that library's objects.
"""

from .heads import (
    CODEBOOK_NAME,
    ConvertedHeads,
    convert_transformers_flava_heads,
    itm_head_state,
    save_converted,
)
from .transformers_flava import (
    ConvertedState,
    config_from_transformers,
    convert_transformers_flava_checkpoint,
    convert_transformers_flava_state_dict,
    load_transformers_flava,
    read_transformers_checkpoint,
)

__all__ = [
    "CODEBOOK_NAME",
    "ConvertedHeads",
    "ConvertedState",
    "config_from_transformers",
    "convert_transformers_flava_checkpoint",
    "convert_transformers_flava_heads",
    "convert_transformers_flava_state_dict",
    "itm_head_state",
    "load_transformers_flava",
    "read_transformers_checkpoint",
    "save_converted",
]
