"""The errors model loading raises, each a one-line ``AcdError`` the CLI prints as it is."""

from __future__ import annotations

from acd.errors import AcdError

OFFLINE_HINT = (
    "point acd at a local Hugging Face model directory with --model /path/to/hf_dir, "
    "or run `acd models` to see what is available offline"
)


class ModelError(AcdError):
    """A model spec that cannot be loaded or used by the engine."""


class ModelNotAvailable(ModelError):
    """A hub model that cannot be fetched (no network, or no such repository) nor found cached."""


class InvalidModelDir(ModelError):
    """A local path that is not a loadable Hugging Face model directory."""


class UnsupportedModel(ModelError):
    """A model whose architecture does not expose the hooks the engine needs."""
