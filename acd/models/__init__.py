"""Models: the embedded default(s) shipped as files, local Hugging Face directories, hub names.

``load_model`` is the one way the engine gets a model; see ``acd.models.adapter`` for the hook
vocabulary and docs/models.md for the decisions behind it.
"""

from acd.models.load import (
    DEFAULT_MODEL,
    InvalidModelDir,
    ModelAdapter,
    ModelError,
    ModelInfo,
    ModelNotAvailable,
    ModelSpec,
    UnsupportedModel,
    check_device,
    embedded_model_names,
    embedded_models_dir,
    list_models,
    load_model,
    model_config,
    weights_sha256,
)

__all__ = [
    "DEFAULT_MODEL",
    "InvalidModelDir",
    "ModelAdapter",
    "ModelError",
    "ModelInfo",
    "ModelNotAvailable",
    "ModelSpec",
    "UnsupportedModel",
    "check_device",
    "embedded_model_names",
    "embedded_models_dir",
    "list_models",
    "load_model",
    "model_config",
    "weights_sha256",
]
