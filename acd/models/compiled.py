"""Compiled transformers (tracr: RASP programs compiled into weights whose circuits are known)
as ordinary acd models: ``acd.load_model(DIR)`` on a compiled-program directory returns a
``CompiledAdapter``, on which the whole engine runs unchanged.

A compiled-program directory (written by acd/models/compile_tracr.py; shipped ones live in
``acd/models/compiled/<name>/`` and load by the name ``compiled/<name>``) holds:

- ``config.json``: ``{"format": "acd-compiled", "version": 1, "name", "n_layers", "n_heads",
  "d_model", "d_head", "d_mlp", "n_ctx", "d_vocab", "d_vocab_out", "act_fn": "relu",
  "causal", "attn_scale" (optional), "output_kind" (optional), "empty", ...}``;
- ``model.safetensors``: the weights under TransformerLens names and shapes;
- ``encodings.json``: ``{"input": [token strings in id order, BOS included], "output": [...],
  "bos": "...", "pad": "..." (optional), "max_seq_len": N}``;
- ``program.json`` (not read here): the program and tracr's outputs on examples.

Choices:

- ``spec.d_vocab`` is the *output* vocabulary size (``d_vocab_out``): logits are
  [batch, pos, d_vocab_out] and metrics index them by output ids (answers, targets). The input
  vocabulary is the tokenizer's (``len(tokenizer)``, ``tokenizer.vocab_size``).
- The tokenizer (``CompiledTokenizer``) reads whole symbols split on whitespace; it knows no
  unknown token, so an unknown symbol is a one-line TaskError. Its ``output_*`` methods map the
  output vocabulary.
- ``causal`` is False (tracr compiles non-causal attention): the engine then keeps every
  position in its restarts, since a later position changes every earlier one's output.
- What needs a LayerNorm, the TransformerLens bridge, or the Hugging Face block list
  (``blocks_from``, hooks such as ``ln_final.hook_scale``) raises a one-line AcdError.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch

from acd.errors import TaskError
from acd.models import resolve
from acd.models.adapter import ModelAdapter, ModelSpec
from acd.models.compiled_module import CompiledConfig, CompiledModelError, CompiledTransformer
from acd.models.device import _resolve_device, _resolve_dtype
from acd.models.errors import InvalidModelDir, ModelError, UnsupportedModel

COMPILED_FORMAT = "acd-compiled"
COMPILED_VERSION = 1
# The spec prefix that names a shipped compiled program: ``compiled/reverse``.
COMPILED_PREFIX = "compiled/"
WEIGHTS_FILE = "model.safetensors"

__all__ = [
    "COMPILED_FORMAT",
    "CompiledAdapter",
    "CompiledModelError",
    "CompiledTokenizer",
    "compiled_model_dir",
    "compiled_model_names",
    "compiled_models_dir",
    "is_compiled_dir",
    "load_compiled_model",
    "read_compiled_config",
    "refuse_placement",
]


# --------------------------------------------------------------------------------------------
# Finding compiled-program directories


def compiled_models_dir() -> Path:
    """Where shipped compiled programs live: ``acd/models/compiled/``."""
    # Through the module, so that a test's monkeypatched ``embedded_models_dir`` applies here.
    return resolve.embedded_models_dir() / "compiled"


def compiled_model_names() -> list[str]:
    """The shipped compiled programs, as names ``load_model`` takes (``compiled/reverse``)."""
    root = compiled_models_dir()
    if not root.is_dir():
        return []
    return sorted(COMPILED_PREFIX + p.name for p in root.iterdir() if is_compiled_dir(p))


def is_compiled_dir(path: Path) -> bool:
    """Whether ``path`` is a directory whose config.json says ``"format": "acd-compiled"``."""
    config_file = path / "config.json"
    if not config_file.is_file():
        return False
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False  # not ours to diagnose: the Hugging Face path reports it
    return isinstance(config, dict) and config.get("format") == COMPILED_FORMAT


def compiled_model_dir(spec: str) -> tuple[str, Path] | None:
    """(source, directory) when ``spec`` names a compiled program, else None.

    A path to a compiled-program directory is ``local``; ``compiled/<name>`` naming a shipped
    one is ``embedded``. Anything else (and a ``compiled/<name>`` that is not shipped) is left
    to the usual resolution, so no Hugging Face spec changes meaning.
    """
    path = Path(spec).expanduser()
    if path.is_dir() and is_compiled_dir(path):
        return "local", path
    if spec.startswith(COMPILED_PREFIX):
        shipped = compiled_models_dir() / spec.removeprefix(COMPILED_PREFIX)
        if is_compiled_dir(shipped):
            return "embedded", shipped
    return None


# --------------------------------------------------------------------------------------------
# Reading the files


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InvalidModelDir(f"cannot read {path}: {err}") from err
    if not isinstance(data, dict):
        raise InvalidModelDir(f"{path} is not a JSON object")
    return data


def read_compiled_config(directory: Path) -> CompiledConfig:
    """The architecture in ``directory/config.json``; InvalidModelDir (one line) when a field
    is missing or the version unknown, UnsupportedModel for what the forward does not do."""
    raw = _read_json(directory / "config.json")
    if raw.get("version") != COMPILED_VERSION:
        raise InvalidModelDir(
            f"{directory}: compiled-model format version {raw.get('version')!r}; acd reads "
            f"version {COMPILED_VERSION}"
        )
    sizes = ("n_layers", "n_heads", "d_model", "d_head", "d_mlp", "n_ctx", "d_vocab")
    missing = [key for key in (*sizes, "d_vocab_out") if not isinstance(raw.get(key), int)]
    if missing:
        raise InvalidModelDir(f"{directory}/config.json lacks integer {', '.join(missing)}")
    if raw.get("act_fn", "relu") != "relu":
        raise UnsupportedModel(f"{directory}: activation {raw['act_fn']!r}; acd runs relu only")
    if raw.get("normalization") is not None:
        raise UnsupportedModel(
            f"{directory}: normalization {raw['normalization']!r}; acd's "
            "compiled forward has no LayerNorm"
        )
    if raw["n_layers"] < 1:
        raise InvalidModelDir(f"{directory}: a compiled model needs at least one block")
    scale = raw.get("attn_scale")
    return CompiledConfig(
        name=str(raw.get("name", directory.name)),
        n_layers=raw["n_layers"],
        n_heads=raw["n_heads"],
        d_model=raw["d_model"],
        d_head=raw["d_head"],
        d_mlp=raw["d_mlp"],
        n_ctx=raw["n_ctx"],
        d_vocab=raw["d_vocab"],
        d_vocab_out=raw["d_vocab_out"],
        causal=bool(raw.get("causal", False)),
        attn_scale=None if scale is None else float(scale),
        output_kind=str(raw.get("output_kind", "categorical")),
        empty=dict(raw.get("empty") or {}),
    )


def _load_weights(module: CompiledTransformer, directory: Path) -> None:
    """Fill ``module`` from ``directory/model.safetensors`` (every name and shape checked)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = directory / WEIGHTS_FILE
    if not path.is_file():
        raise InvalidModelDir(f"{directory} has no {WEIGHTS_FILE}")
    try:
        state = load_file(str(path))
    except (OSError, SafetensorError) as err:
        raise InvalidModelDir(f"cannot read {path}: {err}") from err
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise InvalidModelDir(
            f"{path}: missing {missing[:3] or 'nothing'}, unexpected {extra[:3] or 'nothing'}"
        )
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise InvalidModelDir(
                f"{path}: {name} is {tuple(tensor.shape)}, config.json implies "
                f"{tuple(expected[name].shape)}"
            )
    module.load_state_dict(state)


# --------------------------------------------------------------------------------------------
# The tokenizer


class CompiledTokenizer:
    """The program's vocabularies: input symbols (ids the embedding reads) and output symbols
    (ids of the logits). Text is whole symbols separated by whitespace; ``__call__`` and
    ``encode`` prepend BOS unless ``add_special_tokens=False``, as TransformerLens' tokenizers
    do. What acd's task encoding calls (acd/tasks/encoding.py) is here, and the common
    Hugging Face names (``convert_tokens_to_ids``, ``decode``, ...)."""

    def __init__(self, encodings: dict[str, Any], source: str = "encodings.json"):
        tokens = encodings.get("input")
        outputs = encodings.get("output")
        bos = encodings.get("bos")
        if not isinstance(tokens, list) or not isinstance(outputs, list) or bos not in tokens:
            raise InvalidModelDir(
                f"{source} needs input and output token lists and a bos among the input tokens"
            )
        self.tokens: list[str] = [str(t) for t in tokens]
        self.output_tokens: list[str] = [str(t) for t in outputs]
        self.ids = {token: i for i, token in enumerate(self.tokens)}
        self.output_ids = {token: i for i, token in enumerate(self.output_tokens)}
        self.bos_token: str = str(bos)
        pad = encodings.get("pad")
        self.pad_token: str | None = None if pad is None else str(pad)
        if self.pad_token is not None and self.pad_token not in self.ids:
            raise InvalidModelDir(f"{source}: pad {self.pad_token!r} is not an input token")
        self.max_seq_len: int | None = encodings.get("max_seq_len")

    # --- special tokens (acd.tasks.encoding reads these) --------------------------------------

    @property
    def bos_token_id(self) -> int:
        return self.ids[self.bos_token]

    @property
    def pad_token_id(self) -> int | None:
        return None if self.pad_token is None else self.ids[self.pad_token]

    eos_token_id = None  # tracr programs have no end-of-sequence token
    unk_token_id = None  # ... and no unknown token: unknown symbols raise TaskError
    backend_tokenizer = None  # no Rust tokenizer: acd.tasks.encoding calls __call__

    @property
    def all_special_ids(self) -> list[int]:
        return [i for i in (self.bos_token_id, self.pad_token_id) if i is not None]

    @property
    def all_special_tokens(self) -> list[str]:
        return [self.tokens[i] for i in self.all_special_ids]

    # --- sizes ---------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Input vocabulary size (the embedding's rows)."""
        return len(self.tokens)

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def output_vocab_size(self) -> int:
        """Output vocabulary size (the logits' last dimension, ``spec.d_vocab``)."""
        return len(self.output_tokens)

    def get_vocab(self) -> dict[str, int]:
        return dict(self.ids)

    # --- encoding ------------------------------------------------------------------------------

    def convert_tokens_to_ids(self, tokens: str | list[str]) -> int | list[int]:
        """Input symbol(s) -> id(s); TaskError naming an unknown symbol."""
        if isinstance(tokens, str):
            return self._id(tokens)
        return [self._id(t) for t in tokens]

    def _id(self, token: str) -> int:
        if token not in self.ids:
            raise TaskError(
                f"{token!r} is not an input symbol of this program (symbols: "
                f"{', '.join(self.tokens)})"
            )
        return self.ids[token]

    def convert_ids_to_tokens(self, ids: int | list[int]) -> str | list[str]:
        if isinstance(ids, int):
            return self.tokens[ids]
        return [self.tokens[int(i)] for i in ids]

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Whitespace-separated symbols -> ids, BOS first unless ``add_special_tokens=False``."""
        ids = [self._id(token) for token in text.split()]
        return [self.bos_token_id, *ids] if add_special_tokens else ids

    def __call__(
        self, text: str | list[str], add_special_tokens: bool = True, **_: Any
    ) -> dict[str, Any]:
        """``{"input_ids": ids}`` for one text, or a list of id lists for a list of texts
        (other Hugging Face keyword arguments are accepted and ignored)."""
        if isinstance(text, str):
            return {"input_ids": self.encode(text, add_special_tokens)}
        return {"input_ids": [self.encode(t, add_special_tokens) for t in text]}

    def decode(self, ids: list[int] | torch.Tensor, skip_special_tokens: bool = False) -> str:
        values = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        special = set(self.all_special_ids) if skip_special_tokens else set()
        return " ".join(self.tokens[int(i)] for i in values if int(i) not in special)

    # --- the output vocabulary -----------------------------------------------------------------

    def convert_output_tokens_to_ids(self, tokens: str | list[str]) -> int | list[int]:
        """Output symbol(s) -> logit index(es); TaskError naming an unknown one."""
        if isinstance(tokens, str):
            return self._output_id(tokens)
        return [self._output_id(t) for t in tokens]

    def _output_id(self, token: str) -> int:
        if token not in self.output_ids:
            raise TaskError(
                f"{token!r} is not an output symbol of this program (symbols: "
                f"{', '.join(self.output_tokens)})"
            )
        return self.output_ids[token]

    def convert_output_ids_to_tokens(self, ids: int | list[int]) -> str | list[str]:
        if isinstance(ids, int):
            return self.output_tokens[ids]
        return [self.output_tokens[int(i)] for i in ids]


# --------------------------------------------------------------------------------------------
# The adapter


@dataclass
class CompiledAdapter(ModelAdapter):
    """A compiled program as acd's ModelAdapter: ``bridge`` is the ``CompiledTransformer``
    (acd.models.compiled_module), which runs the forward and fires the hook vocabulary.

    Differs from a Hugging Face model's adapter in: the final hook (``unembed.hook_in``: there
    is no final norm), ``causal`` (False), ``run_from_block`` (runs blocks ``layer`` .. only,
    computing logits at ``positions`` only), ``n_params``, ``attn_output_bias``, and
    ``blocks_from`` (refused: there is no Hugging Face block list). ``weights_hash()`` is the
    sha256 of ``model.safetensors`` (inherited). ``config`` is the program's architecture.
    """

    def __post_init__(self) -> None:
        # tracr compiles non-causal attention by default; the config says which. (Set here:
        # ``causal`` is not an __init__ argument of ModelAdapter.)
        self.causal = self.module.cfg.causal

    @property
    def module(self) -> CompiledTransformer:
        """The forward (``bridge``, typed as what it is)."""
        return cast(CompiledTransformer, self.bridge)

    @property
    def config(self) -> CompiledConfig:
        return self.module.cfg

    @property
    def n_params(self) -> int:
        """Parameters of the compiled weights (every tensor of ``model.safetensors``)."""
        return sum(p.numel() for p in self.module.parameters())

    def hook_final_resid(self) -> str:
        """The final residual read by the unembedding (the ``logits`` node): [batch, pos,
        d_model]. There is no final norm."""
        return "unembed.hook_in"

    def attn_output_bias(self, layer: int) -> torch.Tensor:
        """b_O of layer ``layer``: [d_model]."""
        return self.module.block_weights(self._layer(layer)).attn.b_O.detach()

    def run_from_block(
        self,
        residual: torch.Tensor,
        layer: int,
        hooks: list[tuple[str, Callable]],
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Blocks ``layer`` .. n_layers - 1 and the unembedding only, without gradients (see
        ``ModelAdapter.run_from_block``). ``hooks[0]`` at ``hook_resid_pre(layer)`` (or
        ``hook_final_resid()``) sees ``residual`` itself and may replace it. Logits
        [batch, pos, d_vocab], or [batch, k, d_vocab] at ``positions`` [k], unembedded there
        only."""
        with torch.no_grad():
            return self.module.run_from_block(residual, layer, hooks, positions)

    @property
    def accepts_logits_to_keep(self) -> bool:
        """Always: ``run_from_block`` unembeds the chosen positions only."""
        return True

    @contextmanager
    def blocks_from(self, layer: int) -> Iterator[None]:
        """Refused: a compiled model has no Hugging Face block list to cut; runs from a block
        go through ``run_from_block``, which never runs the earlier blocks."""
        raise CompiledModelError(
            f"compiled model {self.name!r}: blocks_from does not apply; use run_from_block"
        )
        yield  # unreachable; makes this a generator for contextmanager


# --------------------------------------------------------------------------------------------
# Loading


def load_compiled_model(
    name: str,
    source: str,
    directory: Path,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> CompiledAdapter:
    """Load a compiled-program directory as a ``CompiledAdapter`` (frozen, eval mode).

    Args:
        name: what the user asked for (a path, ``compiled/reverse``).
        source: ``local`` or ``embedded``.
        directory: the compiled-program directory.
        device, dtype: as for ``load_model`` (default CUDA when available, float32; tracr
            itself computes in float32).
    """
    config = read_compiled_config(directory)
    tokenizer = CompiledTokenizer(
        _read_json(directory / "encodings.json"), source=str(directory / "encodings.json")
    )
    if (len(tokenizer), tokenizer.output_vocab_size) != (config.d_vocab, config.d_vocab_out):
        raise InvalidModelDir(
            f"{directory}: encodings.json has {len(tokenizer)} input and "
            f"{tokenizer.output_vocab_size} output tokens; config.json says {config.d_vocab} "
            f"and {config.d_vocab_out}"
        )
    module = CompiledTransformer(config)
    _load_weights(module, directory)
    device_name = _resolve_device(device)
    resolved_dtype = _resolve_dtype(dtype)
    module.to(device=device_name, dtype=resolved_dtype)
    module.eval()
    module.requires_grad_(False)
    return CompiledAdapter(
        name=name,
        path=str(directory),
        source=source,
        # The field is typed for the TransformerLens bridge; the module offers the part of
        # its interface the adapter and the engine call (model(tokens), run_with_hooks, ...).
        bridge=cast(Any, module),
        tokenizer=tokenizer,
        device=torch.device(device_name),
        dtype=resolved_dtype,
        spec=_spec(config),
        weights_dir=directory,
    )


def _spec(config: CompiledConfig) -> ModelSpec:
    """The engine's view of the architecture. ``d_vocab`` is the output vocabulary size: the
    logits' last dimension, which metrics index by output ids."""
    return ModelSpec(
        architecture="TracrCompiledTransformer",
        n_layers=config.n_layers,
        n_heads=config.n_heads,
        n_kv_heads=config.n_heads,
        d_model=config.d_model,
        d_head=config.d_head,
        d_mlp=config.d_mlp,
        d_vocab=config.d_vocab_out,
        n_ctx=config.n_ctx,
        attn_only=False,
        parallel_attn_mlp=False,
        has_mlp=True,
        normalization_type=None,
        positional_embedding_type="standard",
    )


def refuse_placement(
    name: str,
    device_map: Any = None,
    n_devices: int | None = None,
    hf_model: torch.nn.Module | None = None,
) -> None:
    """ModelError (one line) for ``load_model`` options a compiled model does not take."""
    options = {"device_map": device_map, "hf_model": hf_model}
    options["n_devices"] = None if n_devices in (None, 1) else n_devices  # 1: one device
    given = [key for key, value in options.items() if value is not None]
    if given:
        raise ModelError(
            f"compiled model {name!r} is small and loads whole on one device: "
            f"{' / '.join(given)} does not apply"
        )
