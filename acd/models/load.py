"""Load a model: the embedded default, a local Hugging Face directory, or a hub name.

All three go through one call, ``TransformerBridge.boot_transformers(path_or_name)``
(TransformerLens 4.x), so the offline path (embedded model, local directory) exercises the same
code as ``gpt2`` from the hub. The bridge wraps the plain Hugging Face model and keeps its raw
weights; this module switches on the hooks the engine needs and describes them.

Hook vocabulary (names are TransformerLens aliases, which the bridge maps per architecture;
shapes verified on TransformerLens 4.3 for GPT-2, Llama with grouped-query attention and GPT-NeoX):

================  ==================================  =============================================
method            hook name                           shape and meaning
================  ==================================  =============================================
hook_embed_out    blocks.0.hook_resid_pre             [batch, pos, d_model] residual stream after
                                                      the embeddings (token + position for GPT-2)
hook_resid_pre    blocks.{l}.hook_resid_pre           [batch, pos, d_model] residual into block l
hook_q_input      blocks.{l}.hook_q_input             [batch, pos, n_heads, d_model]
hook_k_input      blocks.{l}.hook_k_input             [batch, pos, n_kv_heads, d_model]
hook_v_input      blocks.{l}.hook_v_input             [batch, pos, n_kv_heads, d_model]
hook_head_result  blocks.{l}.attn.hook_result         [batch, pos, n_heads, d_model], W_O applied,
                                                      b_O excluded
hook_attn_out     blocks.{l}.hook_attn_out            [batch, pos, d_model] = sum over heads of
                                                      hook_result + b_O
hook_mlp_in       blocks.{l}.hook_mlp_in              [batch, pos, d_model]
hook_mlp_out      blocks.{l}.hook_mlp_out             [batch, pos, d_model]
hook_final_resid  ln_final.hook_in                    [batch, pos, d_model] input of the final norm
================  ==================================  =============================================

The q/k/v and MLP inputs are *residual-stream* values, before the block's LayerNorm: the bridge
gives each head (or key-value group) its own copy of the residual, fires the hook on it, then
applies the norm per copy. Changing a copy changes only that head's (or group's) input, never
the residual stream itself, which is what edge patching needs. Under grouped-query attention the
k and v inputs are per key-value group: query head h reads group ``h // (n_heads // n_kv_heads)``.

Inside a hook function, ``hook.name`` is the bridge's canonical name, which may differ from the
alias used to register it (``blocks.0.hook_resid_pre`` reports ``blocks.0.hook_in``).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from acd.errors import AcdError

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

# The embedded model the engine uses when the user names none.
DEFAULT_MODEL = "toy"

# How long the hub reachability probe may take before we call the hub unreachable. A failed DNS
# lookup returns at once; this bounds the case of a firewall that silently drops packets.
HUB_PROBE_TIMEOUT_S = 5.0

# A model directory must hold one of these, or transformers builds an empty tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")

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


# --------------------------------------------------------------------------------------------
# The architecture, as plain data


@dataclass(frozen=True)
class ModelSpec:
    """What the engine needs to know about a model's architecture (plain data, JSON-able)."""

    architecture: str  # the Hugging Face class, e.g. "GPT2LMHeadModel"
    n_layers: int
    n_heads: int
    n_kv_heads: int  # == n_heads without grouped-query attention
    d_model: int
    d_head: int
    d_mlp: int | None
    d_vocab: int
    n_ctx: int
    attn_only: bool
    parallel_attn_mlp: bool  # attention and MLP read the same residual (GPT-NeoX/Pythia, GPT-J)
    has_mlp: bool
    normalization_type: str | None  # "LN", "RMS", ...
    positional_embedding_type: str  # "standard" (learned), "rotary", ...

    @property
    def heads_per_kv_group(self) -> int:
        """Query heads that share one key-value head (1 without grouped-query attention)."""
        return self.n_heads // self.n_kv_heads

    def kv_group(self, head: int) -> int:
        """The key-value group (index into hook_k_input / hook_v_input) query ``head`` reads."""
        return head // self.heads_per_kv_group

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def spec_from_bridge(bridge: TransformerBridge) -> ModelSpec:
    """Read the architecture from a booted bridge's TransformerLens config."""
    cfg = bridge.cfg
    attn_only = bool(getattr(cfg, "attn_only", False))
    n_heads = int(cfg.n_heads)
    return ModelSpec(
        architecture=str(cfg.architecture),
        n_layers=int(cfg.n_layers),
        n_heads=n_heads,
        n_kv_heads=int(getattr(cfg, "n_key_value_heads", None) or n_heads),
        d_model=int(cfg.d_model),
        d_head=int(cfg.d_head),
        d_mlp=None if getattr(cfg, "d_mlp", None) is None else int(cfg.d_mlp),
        d_vocab=int(cfg.d_vocab),
        n_ctx=int(cfg.n_ctx),
        attn_only=attn_only,
        parallel_attn_mlp=bool(getattr(cfg, "parallel_attn_mlp", False)),
        has_mlp=not attn_only and all("mlp" in block._modules for block in bridge.blocks),
        normalization_type=getattr(cfg, "normalization_type", None),
        positional_embedding_type=str(getattr(cfg, "positional_embedding_type", "standard")),
    )


# --------------------------------------------------------------------------------------------
# The loaded model


@dataclass
class ModelAdapter:
    """A loaded model: the TransformerLens bridge, its tokenizer, and the hook vocabulary.

    ``name`` is what the user asked for (``toy``, a path, ``gpt2``); ``path`` is where it was
    loaded from (a local directory, or the hub name for an online hub load); ``source`` is one of
    ``embedded``, ``local``, ``hf-cache``, ``hub``, or ``memory`` for a model passed as
    ``hf_model`` (``path`` is then where its tokenizer came from).

    Forward passes take token ids, ``[batch, pos]`` int64 on ``device``, and return logits
    ``[batch, pos, d_vocab]``: ``adapter.bridge(tokens)``, or with hooks
    ``adapter.bridge.run_with_hooks(tokens, fwd_hooks=[(name, fn), ...])``. The bridge never
    adds BOS to token ids; ``adapter.tokenizer(text)`` *does* prepend BOS (TransformerLens loads
    it with ``add_bos_token=True``): pass ``add_special_tokens=False`` for fragments.
    """

    name: str
    path: str
    source: str
    bridge: TransformerBridge = field(repr=False)
    tokenizer: Any = field(repr=False)
    device: torch.device
    dtype: torch.dtype
    spec: ModelSpec
    weights_dir: Path | None = field(default=None, repr=False)
    _weights_hash: str | None = field(default=None, init=False, repr=False)

    # --- size and identity -------------------------------------------------------------------

    @property
    def n_params(self) -> int:
        """Parameters of the underlying Hugging Face model (tied weights counted once)."""
        return int(self.bridge.n_params_total)

    def weights_hash(self) -> str:
        """sha256 (hex) identifying the weights, computed once.

        For a model loaded from a directory (embedded, local, HF cache, or a hub download found in
        the cache) it is the sha256 of the bytes of its ``*.safetensors`` files, so for a single
        ``model.safetensors`` it equals ``sha256sum model.safetensors``. Otherwise it is the sha256
        of the bridge's state dict (names, dtypes, shapes, bytes), which depends on ``dtype``.
        """
        if self._weights_hash is None:
            files = _safetensors_files(self.weights_dir) if self.weights_dir else []
            if not files and self.source == "hub":
                files = _safetensors_files(_cached_snapshot(self.path))
            self._weights_hash = _hash_files(files) if files else _hash_state_dict(self.bridge)
        return self._weights_hash

    # --- hook vocabulary ---------------------------------------------------------------------

    def _layer(self, layer: int) -> int:
        if not 0 <= layer < self.spec.n_layers:
            raise IndexError(f"layer {layer} out of range for {self.spec.n_layers} layers")
        return layer

    def hook_embed_out(self) -> str:
        """Residual stream after the embeddings (the ``input`` node): [batch, pos, d_model]."""
        return "blocks.0.hook_resid_pre"

    def hook_resid_pre(self, layer: int) -> str:
        """Residual stream entering block ``layer``: [batch, pos, d_model]."""
        return f"blocks.{self._layer(layer)}.hook_resid_pre"

    def hook_q_input(self, layer: int) -> str:
        """Per-head copy of the residual read by the queries: [batch, pos, n_heads, d_model].

        Pre-LayerNorm: the norm is applied to each copy after the hook.
        """
        return f"blocks.{self._layer(layer)}.hook_q_input"

    def hook_k_input(self, layer: int) -> str:
        """Per-KV-group residual copy read by the keys: [batch, pos, n_kv_heads, d_model]."""
        return f"blocks.{self._layer(layer)}.hook_k_input"

    def hook_v_input(self, layer: int) -> str:
        """Per-KV-group residual copy read by the values: [batch, pos, n_kv_heads, d_model]."""
        return f"blocks.{self._layer(layer)}.hook_v_input"

    def hook_head_result(self, layer: int) -> str:
        """Each head's output, W_O applied, b_O excluded: [batch, pos, n_heads, d_model].

        The bridge sums this over heads and adds b_O (``attn_output_bias``) to form
        ``hook_attn_out``; returning a modified tensor from this hook changes that sum.
        """
        return f"blocks.{self._layer(layer)}.attn.hook_result"

    def hook_attn_pattern(self, layer: int) -> str:
        """Attention weights after the softmax: [batch, n_heads, pos (query), pos (key)]."""
        return f"blocks.{self._layer(layer)}.attn.hook_pattern"

    def hook_attn_out(self, layer: int) -> str:
        """Attention block output added to the residual: [batch, pos, d_model]."""
        return f"blocks.{self._layer(layer)}.hook_attn_out"

    def hook_mlp_in(self, layer: int) -> str:
        """Residual read by the MLP, before its LayerNorm: [batch, pos, d_model].

        A copy: changing it changes the MLP's input only, not the residual stream. (The alias
        ``hook_resid_mid`` fires *after* this hook, so it shows the changed value; do not read
        the residual from it while patching the MLP input.)
        """
        return f"blocks.{self._layer(layer)}.hook_mlp_in"

    def hook_mlp_out(self, layer: int) -> str:
        """MLP output added to the residual: [batch, pos, d_model]."""
        return f"blocks.{self._layer(layer)}.hook_mlp_out"

    def hook_final_resid(self) -> str:
        """Residual stream entering the final norm (the ``logits`` node): [batch, pos, d_model]."""
        return "ln_final.hook_in"

    def hook_point(self, name: str):
        """The bridge's HookPoint for a hook name (alias or canonical)."""
        return self.bridge.hook_dict[name]

    def attn_output_bias(self, layer: int) -> torch.Tensor:
        """b_O of layer ``layer``: [d_model], zeros for bias-free attention (Llama).

        Not part of any head's output: it is a constant term of every later destination's input.
        """
        o_proj = self.bridge.blocks[self._layer(layer)].attn.o.original_component
        bias = getattr(o_proj, "bias", None)
        if bias is None:
            return torch.zeros(self.spec.d_model, device=self.device, dtype=self.dtype)
        return bias.detach()

    def vocabulary_hooks(self) -> list[str]:
        """Every hook name of the vocabulary for this model (used to check it at load time)."""
        names = [self.hook_embed_out(), self.hook_final_resid()]
        for layer in range(self.spec.n_layers):
            names += [
                self.hook_resid_pre(layer),
                self.hook_q_input(layer),
                self.hook_k_input(layer),
                self.hook_v_input(layer),
                self.hook_head_result(layer),
                self.hook_attn_out(layer),
            ]
            if self.spec.has_mlp:
                names += [self.hook_mlp_in(layer), self.hook_mlp_out(layer)]
        return names


# --------------------------------------------------------------------------------------------
# Loading


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


def load_model(
    spec: str | os.PathLike = DEFAULT_MODEL,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    *,
    device_map: str | dict[str, str | int] | None = None,
    n_devices: int | None = None,
    hf_model: torch.nn.Module | None = None,
) -> ModelAdapter:
    """Load a model by embedded name, local Hugging Face directory, or hub name.

    Or wrap a Hugging Face model already in memory (``hf_model``), e.g. one built with random
    weights directly on a GPU for a benchmark, so that it is never written to disk.

    Args:
        spec: ``toy`` (an embedded model), ``/path/to/hf_dir``, or a hub name such as ``gpt2``.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...; default CUDA when available, else CPU.
            Not together with ``device_map`` or ``n_devices`` > 1.
        dtype: ``torch.float32`` (default), ``torch.bfloat16``, ... or their names as strings.
        device_map: a model too big for one GPU, split across devices by Hugging Face
            Accelerate: ``"auto"``, ``"balanced"``, or a dict from module names to devices
            (``{"": "cpu"}`` puts everything on the CPU). Passed to the bridge's boot, which
            loads the Hugging Face model with it; the adapter's ``device`` is then the
            embedding's device, where token ids and the engine's buffers go (docs/scale.md).
        n_devices: split the model evenly across this many CUDA devices (the bridge turns it
            into a balanced device_map); 1 or None: one device.
        hf_model: a Hugging Face causal LM (``LlamaForCausalLM(config)``, ...) to wrap as it
            is: it stays on its device(s) in its dtype, and the adapter's ``device`` and
            ``dtype`` are those of its first parameter (``device`` / ``dtype``, if given, must
            agree). ``spec`` then only says where the tokenizer comes from: a directory with a
            tokenizer (weights not needed) or a hub name; the architecture is read from
            ``hf_model.config``. The model is changed in place: eval mode, parameters frozen,
            eager attention (the bridge's hooks need it). Not with ``device_map`` /
            ``n_devices``: place the model before passing it. ``source`` is ``memory`` and
            ``weights_hash()`` hashes the state dict.

    Raises:
        ModelNotAvailable: a hub name that cannot be fetched and is not cached.
        InvalidModelDir: a path that is not a Hugging Face model directory.
        UnsupportedModel: an architecture without the per-head hooks the engine needs.
        ModelError: ``hf_model`` with ``device_map`` / ``n_devices``, or with a ``device`` or
            ``dtype`` other than its own.
    """
    name = str(spec)
    if hf_model is not None:
        if device_map is not None or n_devices is not None:
            raise ModelError("hf_model is already placed: pass it without device_map / n_devices")
        device, dtype = _in_memory_placement(hf_model, device, dtype)
    resolved = _resolve(name, need_weights=hf_model is None)
    if hf_model is not None:
        # The weights are the in-memory ones, not whatever files sit next to the tokenizer.
        resolved = _Resolved("memory", resolved.location, None)
    split = device_map is not None or (n_devices is not None and n_devices > 1)
    if split and device is not None:
        raise ModelError("pass either device or device_map / n_devices, not both")
    device = None if split else _resolve_device(device)
    dtype = _resolve_dtype(dtype)
    placement = {"device_map": device_map, "n_devices": n_devices} if split else {}
    if hf_model is not None:
        placement["hf_model"] = hf_model
    bridge = _boot(name, resolved, device, dtype, **placement)
    _configure_hooks(bridge, name)
    adapter = ModelAdapter(
        name=name,
        path=resolved.location,
        source=resolved.source,
        bridge=bridge,
        tokenizer=bridge.tokenizer,
        device=torch.device(bridge.cfg.device),
        dtype=dtype,
        spec=spec_from_bridge(bridge),
        weights_dir=resolved.weights_dir,
    )
    missing = [h for h in adapter.vocabulary_hooks() if h not in bridge.hook_dict]
    if missing:
        raise UnsupportedModel(
            f"model {name!r} ({adapter.spec.architecture}) lacks hooks the engine needs: "
            f"{', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}"
        )
    return adapter


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


def _in_memory_placement(
    hf_model: torch.nn.Module, device: str | torch.device | None, dtype: str | torch.dtype | None
) -> tuple[str, torch.dtype]:
    """The device and dtype of an in-memory model (its first parameter's), checked against
    what the caller asked for: the model is wrapped as it is, never moved or cast."""
    try:
        first = next(hf_model.parameters())
    except (AttributeError, StopIteration) as err:
        raise ModelError("hf_model has no parameters: pass a Hugging Face model") from err
    if device is not None and not _same_device(torch.device(device), first.device):
        raise ModelError(f"hf_model is on {first.device}, not {device}: move it first")
    if dtype is not None and _resolve_dtype(dtype) != first.dtype:
        raise ModelError(f"hf_model is in {first.dtype}, not {dtype}: cast it first")
    return str(first.device), first.dtype


def _same_device(asked: torch.device, actual: torch.device) -> bool:
    """``cuda`` (no index) matches any CUDA device; otherwise type and index must agree."""
    return asked.type == actual.type and asked.index in (None, actual.index)


def _resolve_device(device: str | torch.device | None) -> str:
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    check_device(device)
    return str(device)


def check_device(device: str | torch.device | None) -> None:
    """Refuse, in one line (ModelError), a device this process cannot use: a name torch does
    not know (``tpu9``), CUDA without a CUDA device, a CUDA index past the last device, MPS
    where it is unavailable, or a kind acd does not run on. None (the default) is always fine.
    Cheap: nothing is allocated, so commands call it before loading anything."""
    if device is None:
        return
    try:
        kind = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ModelError(f"unknown device {str(device)!r}; use cpu, cuda, cuda:N or mps") from None
    if kind.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch has no CUDA support" if torch.version.cuda is None else "no GPU"
            raise ModelError(f"device {str(device)!r}: CUDA is not available ({why}); use cpu")
        count = torch.cuda.device_count()
        if kind.index is not None and kind.index >= count:
            raise ModelError(
                f"device {str(device)!r}: there are {count} CUDA devices (cuda:0 .. "
                f"cuda:{count - 1})"
            )
    elif kind.type == "mps":
        if not torch.backends.mps.is_available():
            raise ModelError(f"device {str(device)!r}: MPS is not available here; use cpu")
    elif kind.type != "cpu":
        raise ModelError(f"device {str(device)!r}: acd runs on cpu, cuda or mps")


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


def _resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(value, torch.dtype):
        raise ModelError(f"unknown dtype {dtype!r} (use float32, bfloat16 or float16)")
    return value


def _boot(
    name: str, resolved: _Resolved, device: str | None, dtype: torch.dtype, **placement: Any
) -> TransformerBridge:
    """The one loading call, for every kind of spec; its failures become one-line errors.

    ``placement``: ``device_map`` / ``n_devices`` for a model split across devices (then
    ``device`` is None: the bridge refuses both), or ``hf_model``, an in-memory model to wrap
    (``device`` and ``dtype`` are then its own; the bridge takes its config, not the spec's)."""
    # Imported here, not at module import: transformer_lens takes seconds to import, and
    # `acd models` or `import acd` should not pay for it.
    from safetensors import SafetensorError
    from transformer_lens.model_bridge import TransformerBridge

    try:
        return TransformerBridge.boot_transformers(
            resolved.location, device=device, dtype=dtype, **placement
        )
    except (OSError, ValueError, KeyError, NotImplementedError, SafetensorError) as err:
        reason = _first_line(err)
        if resolved.source == "hub":
            raise ModelNotAvailable(
                f"model {name!r} could not be fetched from the Hugging Face hub ({reason}); "
                f"{OFFLINE_HINT}"
            ) from err
        raise InvalidModelDir(
            f"could not load model {name!r} from {resolved.location}: {reason}"
        ) from err


def _configure_hooks(bridge: TransformerBridge, name: str) -> None:
    """Switch on the hooks the engine needs; eval mode; no gradients on parameters.

    Compatibility mode (``enable_compatibility_mode()``) is deliberately NOT used: it folds the
    LayerNorms into the weights and centres the writing weights and the unembedding, so logits
    move away from Hugging Face's (by ~3e-2 on a random tiny GPT-2) and per-head results live in
    a centred basis with b_V folded into b_O. Everything the engine needs already fires without
    it, on raw Hugging Face numerics (logits equal the plain HF model's to ~1e-7): per-head
    results, pre-LayerNorm split q/k/v inputs, and hook_mlp_in. With ``no_processing=True`` it
    would only add legacy aliases we do not use.
    """
    try:
        bridge.set_use_attn_result(True)
        bridge.set_use_split_qkv_input(True)
    except NotImplementedError as err:
        raise UnsupportedModel(
            f"model {name!r} does not expose per-head attention hooks: {_first_line(err)}"
        ) from err
    bridge.set_use_hook_mlp_in(True)
    _check_pre_norm_fork(bridge, name)
    bridge.eval()
    # The bridge keeps the wrapped HF model outside its module tree: freeze both.
    bridge.requires_grad_(False)
    bridge.original_model.requires_grad_(False)


def _check_pre_norm_fork(bridge: TransformerBridge, name: str) -> None:
    """Refuse models where the q/k/v hooks would fire after the norm instead of before it.

    The bridge forks the residual *before* ln1 only when a block exposes ln1 and its attention
    supports the split fork; otherwise it silently falls back to the normed input, which is not
    a sum of source outputs and would make edge patching wrong.
    """
    for layer, block in enumerate(bridge.blocks):
        ln1 = block.submodules.get("ln1") if block.submodules else None
        attn = block._modules.get("attn")
        ok = (
            ln1 is not None
            and getattr(ln1, "original_component", None) is not None
            and getattr(attn, "supports_split_qkv_fork", False)
        )
        if not ok:
            raise UnsupportedModel(
                f"model {name!r}: block {layer} has no pre-norm q/k/v input fork "
                f"({type(attn).__name__}); acd needs a pre-LayerNorm decoder-only transformer"
            )


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


# --------------------------------------------------------------------------------------------
# Weights


def _safetensors_files(directory: Path | None) -> list[Path]:
    if directory is None or not directory.is_dir():
        return []
    return sorted(directory.glob("*.safetensors"))


def _hash_files(files: list[Path]) -> str:
    """sha256 over the files' bytes, in name order (one file: equals ``sha256sum``)."""
    digest = hashlib.sha256()
    for path in files:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _hash_state_dict(bridge: TransformerBridge) -> str:
    """sha256 over the bridge's state dict: names, dtypes, shapes and raw bytes, in name order."""
    digest = hashlib.sha256()
    state = bridge.state_dict()
    for key in sorted(state):
        tensor = state[key].detach().to("cpu").contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def weights_sha256(model: ModelAdapter) -> str:
    """sha256 (hex) of a loaded model's weights, the same on every device.

    Hashes the state dict (parameters and persistent buffers) of the Hugging Face model the
    bridge wraps, in sorted name order: for each tensor its name, dtype and shape, then its raw
    bytes, copied to the CPU one tensor at a time so a model on a GPU never needs a second copy
    in host memory. The bytes depend on the dtype (a model loaded in bfloat16 hashes differently
    from the same model in float32); tied weights are hashed under each of their names.
    Unlike ``ModelAdapter.weights_hash`` it never reads files, so it also identifies weights
    changed in memory.
    """
    module = getattr(model.bridge, "original_model", None)
    state = (model.bridge if module is None else module).state_dict()
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(_raw_bytes(tensor))
    return digest.hexdigest()


def _raw_bytes(tensor: torch.Tensor):
    """The tensor's bytes in memory order, as a buffer (any dtype, bfloat16 and bool included:
    numpy has no bfloat16, so the bytes are reinterpreted as uint8 before leaving torch)."""
    flat = tensor.to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy()


def safetensors_n_params(directory: Path) -> int | None:
    """Parameter count read from the ``*.safetensors`` headers alone (no tensor data is read).

    The format starts with an 8-byte little-endian header length, then a JSON header mapping
    each tensor name to its dtype, shape and offsets.
    """
    files = _safetensors_files(directory)
    if not files:
        return None
    total = 0
    for path in files:
        with open(path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(header_len))
        for key, entry in header.items():
            if key != "__metadata__":
                n = 1
                for dim in entry["shape"]:
                    n *= dim
                total += n
    return total


# --------------------------------------------------------------------------------------------
# What is available offline


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
    infos = [
        _describe_dir(name, "embedded", embedded_models_dir() / name)
        for name in embedded_model_names()
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
        snapshot = _cached_snapshot(repo.repo_id)
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
