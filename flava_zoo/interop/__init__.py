"""Converters from other libraries' weight layouts to flava-zoo's.

Each converter needs only torch to map a state dict; the library it converts from is
imported lazily, and only by the helpers that take that library's objects.
"""

from .transformers_flava import (
    ConvertedState,
    config_from_transformers,
    convert_transformers_flava_state_dict,
    load_transformers_flava,
)

__all__ = [
    "ConvertedState",
    "config_from_transformers",
    "convert_transformers_flava_state_dict",
    "load_transformers_flava",
]
