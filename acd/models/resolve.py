"""What a model spec names: an embedded model, a local directory, or a hub repository.

Decided without loading anything, and offline in well under a second: a hub name is probed
once (``_hub_reachable``), then looked up in the local Hugging Face cache. Tests monkeypatch
``embedded_models_dir`` and ``_hub_reachable`` on this module.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from acd.models.errors import OFFLINE_HINT, InvalidModelDir, ModelNotAvailable
from acd.models.weights import _safetensors_files

# How long the hub reachability probe may take before we call the hub unreachable. A failed DNS
# lookup returns at once; this bounds the case of a firewall that silently drops packets.
HUB_PROBE_TIMEOUT_S = 5.0

# A model directory must hold one of these, or transformers builds an empty tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")


def embedded_models_dir() -> Path:
    """Where embedded models live: ``acd/models/<name>/`` (tests monkeypatch this)."""
    return Path(__file__).resolve().parent


def embedded_model_names() -> list[str]:
    """Embedded model names: subdirectories of ``embedded_models_dir()`` with a config.json."""
    root = embedded_models_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "config.json").is_file())


@dataclass(frozen=True)
class _Resolved:
    """Where a spec points: what to hand to boot_transformers, and where its files are."""

    source: str  # "embedded" | "local" | "hf-cache" | "hub"
    location: str  # a directory, or a hub name for "hub"
    weights_dir: Path | None


def _resolve(spec: str, need_weights: bool = True) -> _Resolved:
    """Decide what ``spec`` names: an embedded model, a local directory, or a hub repository.

    ``need_weights=False`` (the weights come from an in-memory model): a directory needs only
    config.json and a tokenizer."""
    if spec in embedded_model_names():
        path = embedded_models_dir() / spec
        _check_model_dir(path, need_weights)
        return _Resolved("embedded", str(path), path)
    path = Path(spec).expanduser()
    if path.exists():
        _check_model_dir(path, need_weights)
        return _Resolved("local", str(path), path)
    if _looks_like_path(spec):
        raise InvalidModelDir(f"no such model directory: {spec}")
    if _hub_reachable():
        return _Resolved("hub", spec, None)
    snapshot = _cached_snapshot(spec)
    if snapshot is not None:
        _check_model_dir(snapshot, need_weights)  # a partial download may lack weights or tokenizer
        return _Resolved("hf-cache", str(snapshot), snapshot)
    raise ModelNotAvailable(
        f"model {spec!r} could not be fetched from the Hugging Face hub (no network) and is not "
        f"in the local cache; {OFFLINE_HINT}"
    )


def _looks_like_path(spec: str) -> bool:
    """True for specs that can only be paths (hub names are ``name`` or ``org/name``)."""
    if os.path.isabs(spec) or spec.startswith((".", "~")):
        return True
    return spec.count("/") > 1 or "\\" in spec


def _check_model_dir(path: Path, need_weights: bool = True) -> None:
    """Refuse, in one line, a path that is not a Hugging Face model directory with safetensors
    (``need_weights=False``: the safetensors may be missing, the tokenizer may not)."""
    if not path.is_dir():
        raise InvalidModelDir(f"{path} is a file, not a Hugging Face model directory")
    if not (path / "config.json").is_file():
        raise InvalidModelDir(f"{path} is not a Hugging Face model directory (no config.json)")
    if need_weights and not _safetensors_files(path):
        # No pickles: weights must come as safetensors (see DESIGN.md, "Models").
        raise InvalidModelDir(f"{path} has no *.safetensors weights (acd loads no pickled weights)")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        # Without one, transformers silently builds an empty tokenizer instead of failing.
        raise InvalidModelDir(f"{path} has no tokenizer (none of {', '.join(TOKENIZER_FILES)})")


def _hub_reachable() -> bool:
    """One quick request to the hub endpoint, no retries.

    Why: offline, transformers' own download path retries each file with back-off (1+2+4+8+8 s,
    23 s measured) before failing. Probing first lets an offline hub name fail in well under a
    second, while the online path is left exactly as transformers does it.
    """
    from huggingface_hub import constants, is_offline_mode
    from huggingface_hub.utils import get_session

    if is_offline_mode():  # HF_HUB_OFFLINE=1 (or TRANSFORMERS_OFFLINE=1) set by the user
        return False
    try:
        get_session().head(constants.ENDPOINT, timeout=HUB_PROBE_TIMEOUT_S)
    except Exception:  # any transport failure (DNS, refused, timeout, proxy) means: unreachable
        return False
    return True


def _cached_snapshot(repo_id: str) -> Path | None:
    """The local HF-cache snapshot directory of ``repo_id`` (its ``main`` ref), if there is one."""
    from huggingface_hub import snapshot_download

    try:
        path = Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not cached, or not a valid repo id: both mean "no snapshot"
        return None
    return path if (path / "config.json").is_file() else None


def model_config(spec: str | os.PathLike) -> dict[str, Any] | None:
    """The config.json of the model ``spec`` names, read without loading the model.

    Resolves ``spec`` as ``load_model`` does, so a name or path that cannot be loaded fails
    here, in one line (ModelNotAvailable, InvalidModelDir), before any work. None when the
    model is on the hub and not yet downloaded, or its config cannot be read."""
    resolved = _resolve(str(spec))
    if resolved.weights_dir is None:
        return None
    try:
        config = json.loads((resolved.weights_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None
