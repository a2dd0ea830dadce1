"""What is available offline, as ``acd models`` lists it: embedded models, then the HF cache."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from acd.models import resolve
from acd.models.weights import safetensors_n_params


@dataclass(frozen=True)
class ModelInfo:
    """One model available without network, as ``acd models`` lists it."""

    name: str  # what to pass to load_model
    source: str  # "embedded" | "hf-cache"
    path: str
    n_layers: int | None
    n_heads: int | None
    d_model: int | None
    n_params: int | None


def list_models() -> list[ModelInfo]:
    """Models loadable offline: the embedded ones, then those in the local Hugging Face cache."""
    # Looked up through the module, not imported by name, so that a test's monkeypatched
    # ``resolve.embedded_models_dir`` is the one used here too.
    infos = [
        _describe_dir(name, "embedded", resolve.embedded_models_dir() / name)
        for name in resolve.embedded_model_names()
    ]
    return infos + _cached_models()


def _cached_models() -> list[ModelInfo]:
    """Model repositories in the HF cache whose snapshot has a config.json (none if no cache)."""
    from huggingface_hub import constants, scan_cache_dir

    try:
        # Read the cache location at call time (scan_cache_dir's default is fixed at import).
        cache = scan_cache_dir(constants.HF_HUB_CACHE)
    except Exception:  # no cache directory (CacheNotFound) or an unreadable one: nothing cached
        return []
    infos = []
    for repo in sorted(cache.repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model":
            continue
        snapshot = resolve._cached_snapshot(repo.repo_id)
        if snapshot is not None:
            infos.append(_describe_dir(repo.repo_id, "hf-cache", snapshot))
    return infos


def _describe_dir(name: str, source: str, path: Path) -> ModelInfo:
    """Sizes from config.json (key names differ between architectures) and safetensors headers."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        config = {}

    def first(*keys: str) -> int | None:
        return next((int(config[k]) for k in keys if isinstance(config.get(k), int)), None)

    return ModelInfo(
        name=name,
        source=source,
        path=str(path),
        n_layers=first("num_hidden_layers", "n_layer", "num_layers"),
        n_heads=first("num_attention_heads", "n_head"),
        d_model=first("hidden_size", "n_embd", "d_model"),
        n_params=safetensors_n_params(path),
    )
