"""Compile a suite of RASP programs with tracr into plain files that need neither jax nor tracr.

tracr (DeepMind) compiles RASP programs into transformer weights whose every attention head and
MLP has a known job, which makes the compiled models a ground truth for circuit discovery. This
script is the only place that needs tracr: it runs in a separate environment (tracr + numpy +
safetensors; it imports neither torch nor ``acd``) and writes, for each program of the suite,
``<out>/<name>/`` with:

- ``model.safetensors``: float32 weights (tracr itself runs in float32, so these are its exact
  parameters) in TransformerLens names and shapes (``embed.W_E``, ``pos_embed.W_pos``,
  ``blocks.{l}.attn.W_Q/W_K/W_V/W_O/b_Q/b_K/b_V/b_O``, ``blocks.{l}.mlp.W_in/b_in/W_out/b_out``,
  ``unembed.W_U/b_U``).
- ``config.json``: the architecture (no LayerNorm, ReLU MLPs, non-causal attention), which
  halves of which blocks are empty (all-zero), the residual-stream basis labels, the output kind
  (categorical: argmax over ``W_U``'s columns; numerical: the single ``W_U`` column's value), and
  the ground truth: which RASP expression each head and each MLP neuron computes.
- ``encodings.json``: input token strings in id order (with tracr's BOS and PAD), output token
  strings in id order, the BOS string and the maximum sequence length (without BOS).
- ``program.json``: the RASP source text that was compiled, the vocabulary, and tracr's own
  outputs (``model.apply(["BOS", *tokens])``) on the whole input space when it has at most 500
  sequences, else on 300 seeded random inputs.
- ``examples_logits.safetensors``: for the first examples, tracr's final residual stream
  (``residual.{i}``, [n_tokens, d_model]) and its unembedding (``logits.{i}``,
  [n_tokens, d_vocab_out]) so a re-implementation can be checked to ~1e-5, not only by argmax.

After writing, the script checks every program with a plain-numpy forward pass over the saved
TransformerLens-layout arrays (it reads the files back) against tracr's stored outputs.

Run it with the tracr environment (``pip install tracr-pypi==1.0.0 safetensors``)::

    python acd/models/compile_tracr.py [--out acd/models/compiled] [--only NAME] [--no-check]
"""

# pyright: reportMissingImports=false
# (tracr and jax live only in the separate compile environment, not in the project's one.)

from __future__ import annotations

import argparse
import dataclasses
import inspect
import itertools
import json
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file
from tracr.compiler import (
    basis_inference,
    craft_graph_to_model,
    craft_model_to_transformer,
    expr_to_craft_graph,
    nodes,
    rasp_to_graph,
    validating,
)
from tracr.compiler.assemble import _get_model_config_and_module_names
from tracr.craft import bases, transformers
from tracr.rasp import rasp

FORMAT = "acd-compiled"
VERSION = 1
BOS = "BOS"  # ACDC's tracr tasks used "BOS"; the token order depends on the name, so keep it.
PAD = "compiler_pad"  # tracr's default PAD name, kept for the same reason.
MAX_EXHAUSTIVE = 500  # store the whole input space up to this many sequences ...
N_RANDOM = 300  # ... else this many seeded random inputs
N_LOGIT_EXAMPLES = 20  # examples whose raw residual and logits are stored
SEED = 0
RESIDUAL_ATOL = 1e-5  # numpy-vs-tracr tolerance on the final residual and the logits
DEFAULT_OUT = Path(__file__).resolve().parent / "compiled"


# --- The suite: each program is a self-contained function; its source text is stored verbatim.


def reverse() -> rasp.SOp:
    """Reverse the input (ACDC's `reverse`, tracr lib's make_reverse): length, opp_idx, flip."""
    all_true = rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.TRUE).named("all_true")
    length = rasp.SelectorWidth(all_true).named("length")
    opp_idx = (length - rasp.indices).named("opp_idx")
    opp_idx = (opp_idx - 1).named("opp_idx-1")
    flip = rasp.Select(rasp.indices, opp_idx, rasp.Comparison.EQ).named("reverse_selector")
    return rasp.Aggregate(flip, rasp.tokens).named("reverse")


def frac_prevs() -> rasp.SOp:
    """Fraction of the tokens up to each position that are "x" (ACDC's `proportion`); numerical."""
    is_x = rasp.numerical(rasp.Map(lambda t: t == "x", rasp.tokens)).named("is_x")
    prevs = rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.LEQ).named("prevs")
    return rasp.numerical(rasp.Aggregate(prevs, is_x, default=0)).named("frac_prevs")


def length() -> rasp.SOp:
    """The sequence length at every position, via SelectorWidth of an all-true selector."""
    all_true = rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.TRUE).named("all_true")
    return rasp.SelectorWidth(all_true).named("length")


def hist() -> rasp.SOp:
    """Histogram: how many times each position's token occurs in the input (SelectorWidth of EQ)."""
    same_tok = rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.EQ).named("same_tok")
    return rasp.SelectorWidth(same_tok).named("hist")


def sort() -> rasp.SOp:
    """Sort tokens ascending (tracr lib's make_sort_unique; inputs have distinct tokens)."""
    smaller = rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.LT).named("smaller")
    target_pos = rasp.SelectorWidth(smaller).named("target_pos")
    sel_new = rasp.Select(target_pos, rasp.indices, rasp.Comparison.EQ).named("sel_new")
    return rasp.Aggregate(sel_new, rasp.tokens).named("sort")


def sort_freq() -> rasp.SOp:
    """Tokens sorted by descending frequency, ties in input order (tracr lib's make_sort_freq)."""
    same_tok = rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.EQ).named("same_tok")
    hist = rasp.SelectorWidth(same_tok).named("hist")
    neg_hist = rasp.Map(lambda h: -h, hist).named("neg_hist")
    # Adding index / max_seq_len makes the keys unique, so the sort needs no tie-breaking.
    keys = rasp.SequenceMap(lambda h, i: h + i / 5, neg_hist, rasp.indices).named("keys")
    smaller = rasp.Select(keys, keys, rasp.Comparison.LT).named("smaller")
    target_pos = rasp.SelectorWidth(smaller).named("target_pos")
    sel_new = rasp.Select(target_pos, rasp.indices, rasp.Comparison.EQ).named("sel_new")
    return rasp.Aggregate(sel_new, rasp.tokens).named("sort_freq")


def increment_mod() -> rasp.SOp:
    """(token + 1) mod 4 at each position: a single categorical MLP lookup, no attention."""
    return rasp.Map(lambda x: (x + 1) % 4, rasp.tokens).named("increment_mod")


def first_plus_prev() -> rasp.SOp:
    """(first token + previous token) mod 3: two heads in one layer, combined by a SequenceMap."""
    is_first = rasp.Select(rasp.indices, rasp.indices, lambda k, q: k == 0).named("is_first")
    first = rasp.Aggregate(is_first, rasp.tokens).named("first")
    is_prev = rasp.Select(rasp.indices, rasp.indices, lambda k, q: k == max(q - 1, 0))
    prev = rasp.Aggregate(is_prev.named("is_prev"), rasp.tokens).named("prev")
    return rasp.SequenceMap(lambda f, p: (f + p) % 3, first, prev).named("first_plus_prev")


def max_token() -> rasp.SOp:
    """The largest token at every position: count larger tokens, flag the maxima, aggregate."""
    larger = rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.GT).named("larger")
    n_larger = rasp.SelectorWidth(larger).named("n_larger")
    is_max = rasp.Map(lambda n: n == 0, n_larger).named("is_max")
    # Every selected key holds the same (maximal) token, so the mean of one-hots stays one-hot.
    sel_max = rasp.Select(is_max, rasp.indices, lambda k, q: k).named("sel_max")
    return rasp.Aggregate(sel_max, rasp.tokens).named("max_token")


def pair_balance() -> rasp.SOp:
    """Fraction of "(" minus fraction of ")" up to each position (tracr lib); numerical."""
    is_open = rasp.numerical(rasp.Map(lambda t: t == "(", rasp.tokens)).named("is_open")
    is_close = rasp.numerical(rasp.Map(lambda t: t == ")", rasp.tokens)).named("is_close")
    prevs = rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.LEQ).named("prevs")
    opens = rasp.numerical(rasp.Aggregate(prevs, is_open, default=0)).named("opens")
    closes = rasp.numerical(rasp.Aggregate(prevs, is_close, default=0)).named("closes")
    balance = rasp.LinearSequenceMap(opens, closes, 1, -1)
    return rasp.numerical(balance).named("pair_balance")


def shuffle_dyck2() -> rasp.SOp:
    """1 if both "()" and "{}" are balanced (tracr lib's make_shuffle_dyck, pairs "()", "{}")."""
    prevs = rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.LEQ).named("prevs")
    balances = []
    for open_tok, close_tok in ["()", "{}"]:
        is_open = rasp.numerical(rasp.Map(lambda t, o=open_tok: t == o, rasp.tokens))
        is_close = rasp.numerical(rasp.Map(lambda t, c=close_tok: t == c, rasp.tokens))
        opens = rasp.numerical(rasp.Aggregate(prevs, is_open.named(f"is_{open_tok}"), default=0))
        closes = rasp.numerical(rasp.Aggregate(prevs, is_close.named(f"is_{close_tok}"), default=0))
        balance = rasp.LinearSequenceMap(
            opens.named(f"opens_{open_tok}"), closes.named(f"closes_{close_tok}"), 1, -1
        )
        balances.append(rasp.numerical(balance).named(f"balance_{open_tok}{close_tok}"))
    neg_0, neg_1 = [(b < 0).named(f"negative_{pair}") for b, pair in zip(balances, ["()", "{}"])]
    any_negative = (neg_0 | neg_1).named("any_negative_cat")
    any_negative = rasp.numerical(rasp.Map(lambda x: x, any_negative)).named("any_negative")
    select_all = rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.TRUE).named("select_all")
    has_neg = rasp.numerical(rasp.Aggregate(select_all, any_negative, default=0)).named("has_neg")
    zero_0, zero_1 = [(b == 0).named(f"zero_{pair}") for b, pair in zip(balances, ["()", "{}"])]
    all_zero = (zero_0 & zero_1).named("all_zero")
    all_true = rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.TRUE).named("all_true")
    length = rasp.SelectorWidth(all_true).named("length")
    last_index = (length - 1).named("last_index")
    select_last = rasp.Select(rasp.indices, last_index, rasp.Comparison.EQ).named("select_last")
    last_zero = rasp.Aggregate(select_last, all_zero).named("last_zero")
    not_has_neg = (~has_neg).named("not_has_neg")
    return (last_zero & not_has_neg).named("shuffle_dyck2")


def distinct_tokens(seq: Sequence[Any]) -> bool:
    """Input filter for the sort program, whose keys must be unique."""
    return len(set(seq)) == len(seq)


@dataclasses.dataclass(frozen=True)
class ProgramSpec:
    """One program of the suite and what it is compiled for."""

    name: str
    build: Callable[[], rasp.SOp]
    vocab: tuple[Any, ...]
    max_seq_len: int
    # Restricts the example inputs to those the program is defined on (None: all sequences).
    input_filter: Callable[[Sequence[Any]], bool] | None = None


SUITE: tuple[ProgramSpec, ...] = (
    ProgramSpec("reverse", reverse, (1, 2, 3), 5),
    ProgramSpec("frac_prevs", frac_prevs, ("w", "x", "y", "z"), 5),
    ProgramSpec("length", length, ("a", "b", "c"), 5),
    ProgramSpec("hist", hist, ("a", "b", "c"), 5),
    ProgramSpec("sort", sort, (1, 2, 3, 4, 5), 5, distinct_tokens),
    ProgramSpec("sort_freq", sort_freq, ("a", "b", "c"), 5),
    ProgramSpec("increment_mod", increment_mod, (0, 1, 2, 3), 4),
    ProgramSpec("first_plus_prev", first_plus_prev, (0, 1, 2), 5),
    ProgramSpec("max_token", max_token, (1, 2, 3, 4), 4),
    ProgramSpec("pair_balance", pair_balance, ("(", ")", "x"), 5),
    ProgramSpec("shuffle_dyck2", shuffle_dyck2, ("(", ")", "{", "}"), 4),
)


# --- Compiling (the steps of tracr.compiler.compiling.compile_rasp_to_model, kept apart so the
# --- RASP graph and the craft model stay available for the ground-truth record).


@dataclasses.dataclass
class Compiled:
    """A compiled program with the intermediate objects tracr throws away."""

    spec: ProgramSpec
    program: rasp.SOp
    model: Any  # tracr AssembledTransformerModel
    graph: Any  # networkx graph of RASP nodes with their craft blocks
    sink: dict
    craft_model: transformers.SeriesWithResiduals


def compile_program(spec: ProgramSpec) -> Compiled:
    """Compile one program non-causally, as compile_rasp_to_model does (mlp_exactness 100)."""
    # tracr labels are name + a global counter assigned on first use; restarting the counter
    # makes each program's labels (and so its residual-basis order) independent of the suite.
    rasp.RASPExpr._ids = itertools.count(1)
    program = spec.build()
    unsupported = validating.static_validate(program)
    if unsupported:
        reasons = "; ".join(f"{e.expr.name}: {e.reason}" for e in unsupported)
        raise NotImplementedError(f"unsupported RASP expressions: {reasons}")
    extracted = rasp_to_graph.extract_rasp_graph(program)
    graph, sources, sink = extracted.graph, extracted.sources, extracted.sink
    basis_inference.infer_bases(graph, sink, set(spec.vocab), spec.max_seq_len)
    expr_to_craft_graph.add_craft_components_to_rasp_graph(
        graph, bos_dir=bases.BasisDirection(rasp.tokens.label, BOS), mlp_exactness=100
    )
    craft_model = craft_graph_to_model.craft_graph_to_model(graph, sources)
    model = craft_model_to_transformer.craft_model_to_transformer(
        craft_model=craft_model,
        graph=graph,
        sink=sink,
        max_seq_len=spec.max_seq_len,
        causal=False,
        compiler_bos=BOS,
        compiler_pad=PAD,
    )
    return Compiled(spec, program, model, graph, sink, craft_model)


def is_numerical_output(compiled: Compiled) -> bool:
    """Whether the program's output is one numerical residual direction (not a categorical one)."""
    return rasp.is_numerical(compiled.sink[nodes.EXPR])


# --- Conversion to TransformerLens layout.


def param(model: Any, module: str, name: str) -> np.ndarray:
    """One haiku parameter as a float32 numpy array."""
    return np.asarray(model.params[module][name], dtype=np.float32)


def unembed_matrix(compiled: Compiled) -> np.ndarray:
    """[d_model, d_vocab_out]: 1 where a residual direction is output direction j, else 0.

    tracr unembeds by projecting the residual onto the output space; its columns follow the
    output space's basis order, which is also the output encoder's id order.
    """
    labels = list(compiled.model.residual_labels)
    output_basis = compiled.sink[nodes.OUTPUT_BASIS]
    w_u = np.zeros((len(labels), len(output_basis)), dtype=np.float32)
    for j, direction in enumerate(output_basis):
        w_u[labels.index(str(direction)), j] = 1.0
    return w_u


def tl_weights(compiled: Compiled) -> dict[str, np.ndarray]:
    """tracr's haiku params renamed and reshaped to TransformerLens conventions.

    tracr's layer_{l} already is attention then MLP, like a TransformerLens block, so layers map
    one to one; halves tracr leaves unused are all-zero there and stay so here.
    """
    model = compiled.model
    cfg = model.model_config
    n_heads, d_head = cfg.num_heads, cfg.key_size
    w_u = unembed_matrix(compiled)
    weights = {
        "embed.W_E": param(model, "token_embed", "embeddings"),
        "pos_embed.W_pos": param(model, "pos_embed", "embeddings"),
        "unembed.W_U": w_u,
        "unembed.b_U": np.zeros(w_u.shape[1], dtype=np.float32),
    }
    d_model = weights["embed.W_E"].shape[1]
    for layer in range(cfg.num_layers):
        attn, mlp = f"transformer/layer_{layer}/attn", f"transformer/layer_{layer}/mlp"
        for letter, module in (("Q", "query"), ("K", "key"), ("V", "value")):
            # haiku: x @ w with w [d_model, n_heads * d_head], heads outermost.
            w = param(model, f"{attn}/{module}", "w").reshape(d_model, n_heads, d_head)
            weights[f"blocks.{layer}.attn.W_{letter}"] = w.transpose(1, 0, 2).copy()
            b = param(model, f"{attn}/{module}", "b").reshape(n_heads, d_head)
            weights[f"blocks.{layer}.attn.b_{letter}"] = b
        w_o = param(model, f"{attn}/linear", "w").reshape(n_heads, d_head, d_model)
        weights[f"blocks.{layer}.attn.W_O"] = w_o
        weights[f"blocks.{layer}.attn.b_O"] = param(model, f"{attn}/linear", "b")
        weights[f"blocks.{layer}.mlp.W_in"] = param(model, f"{mlp}/linear_1", "w")
        weights[f"blocks.{layer}.mlp.b_in"] = param(model, f"{mlp}/linear_1", "b")
        weights[f"blocks.{layer}.mlp.W_out"] = param(model, f"{mlp}/linear_2", "w")
        weights[f"blocks.{layer}.mlp.b_out"] = param(model, f"{mlp}/linear_2", "b")
    return weights


def empty_halves(weights: dict[str, np.ndarray], n_layers: int) -> dict[str, list[int]]:
    """Layer indices whose attention (or MLP) weights are all zero, i.e. tracr left them unused."""
    empty: dict[str, list[int]] = {"attn": [], "mlp": []}
    for layer in range(n_layers):
        for kind in ("attn", "mlp"):
            prefix = f"blocks.{layer}.{kind}."
            if not any(np.any(w) for key, w in weights.items() if key.startswith(prefix)):
                empty[kind].append(layer)
    return empty


# --- Ground truth: which RASP expression each head and MLP neuron implements.


def block_owners(compiled: Compiled) -> tuple[dict[int, str], list[tuple[str, transformers.MLP]]]:
    """Maps id(attention head) -> RASP label, and lists (label, MLP) for every MLP node."""
    head_owner: dict[int, str] = {}
    mlp_owners: list[tuple[str, transformers.MLP]] = []

    def visit(label: str, block: Any) -> None:
        if isinstance(block, transformers.SeriesWithResiduals):  # SelectorWidth: attn + MLP
            for sub in block.blocks:
                visit(label, sub)
        elif isinstance(block, transformers.MLP):
            mlp_owners.append((label, block))
        else:
            for head in block.as_multi().heads():
                head_owner[id(head)] = label

    for label, node in compiled.graph.nodes.items():
        if node.get(nodes.MODEL_BLOCK) is not None:
            visit(label, node[nodes.MODEL_BLOCK])
    return head_owner, mlp_owners


def ground_truth(compiled: Compiled) -> dict[str, Any]:
    """Per layer: the RASP label of each head, and of each MLP neuron (None where unused)."""
    head_owner, mlp_owners = block_owners(compiled)
    _, module_names = _get_model_config_and_module_names(compiled.craft_model)
    n_layers = compiled.model.model_config.num_layers
    d_mlp = compiled.model.model_config.mlp_hidden_size
    heads: list[list[str]] = [[] for _ in range(n_layers)]
    neurons: list[list[str | None]] = [[None] * d_mlp for _ in range(n_layers)]
    for module_name, block in zip(module_names, compiled.craft_model.blocks):
        layer = int(module_name.split("/")[1].removeprefix("layer_"))
        if isinstance(block, transformers.MLP):
            # The combined MLP's hidden basis is the union of its parts' hidden bases; a part is
            # in this layer when all its hidden directions are. Parts can share a direction
            # (every SelectorWidth has "_hidden_clean_bos_"), so a neuron may have two owners.
            hidden = block.fst.output_space.basis
            here = [
                (lab, m) for lab, m in mlp_owners if set(m.fst.output_space.basis) <= set(hidden)
            ]
            for i, direction in enumerate(hidden):
                owners = sorted({lab for lab, m in here if direction in m.fst.output_space.basis})
                neurons[layer][i] = "+".join(owners) if owners else "?"
        else:
            heads[layer] = [head_owner.get(id(h), "?") for h in block.as_multi().heads()]
    return {
        "heads": heads,
        "mlp_neurons": neurons,
        "mlps": [sorted({o for n in layer if n for o in n.split("+")}) for layer in neurons],
    }


# --- Inputs and tracr's reference outputs.


def example_inputs(spec: ProgramSpec) -> tuple[list[tuple[Any, ...]], bool]:
    """All inputs of length 1..max_seq_len (filtered) if few enough, else a seeded random subset.

    Returns the inputs and whether they are the whole (filtered) input space.
    """
    everything = [
        seq
        for n in range(1, spec.max_seq_len + 1)
        for seq in itertools.product(spec.vocab, repeat=n)
        if spec.input_filter is None or spec.input_filter(seq)
    ]
    if len(everything) <= MAX_EXHAUSTIVE:
        return everything, True
    rng = np.random.default_rng(SEED)
    chosen = sorted(rng.choice(len(everything), size=N_RANDOM, replace=False).tolist())
    return [everything[i] for i in chosen], False


def json_value(value: Any) -> Any:
    """A decoded tracr value as plain JSON (numpy scalars and floats made native)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    return value


def run_tracr(compiled: Compiled, inputs: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """tracr's own outputs per input: decoded values, argmax ids, and its final residual."""
    model = compiled.model
    examples = []
    for seq in inputs:
        tokens = [BOS, *seq]
        out = model.apply(tokens)
        example = {
            "input": [json_value(t) for t in seq],
            "input_ids": model.input_encoder.encode(tokens),
            "output": [json_value(v) for v in out.decoded],
            "residual": np.asarray(out.transformer_output[0], dtype=np.float32),
        }
        if not is_numerical_output(compiled):
            # For categorical outputs tracr's `unembedded` already is the argmax id per position.
            example["output_ids"] = [int(i) for i in np.asarray(out.unembedded[0])]
        examples.append(example)
    return examples


# --- Writing the files.


def output_strings(compiled: Compiled) -> list[str]:
    """Output token strings in id order (numerical: the name of the one output direction)."""
    return [
        str(d.value) if d.value is not None else str(d.name)
        for d in compiled.sink[nodes.OUTPUT_BASIS]
    ]


def program_source(spec: ProgramSpec) -> str:
    """The exact source text of the program's function in this script."""
    return textwrap.dedent(inspect.getsource(spec.build))


def write_program(compiled: Compiled, out_dir: Path) -> dict[str, Any]:
    """Writes the five files of one program; returns its config for the report."""
    spec, model = compiled.spec, compiled.model
    cfg = model.model_config
    weights = tl_weights(compiled)
    numerical = is_numerical_output(compiled)
    config = {
        "format": FORMAT,
        "version": VERSION,
        "name": spec.name,
        "n_layers": cfg.num_layers,
        "n_heads": cfg.num_heads,
        "d_model": int(weights["embed.W_E"].shape[1]),
        "d_head": cfg.key_size,
        "d_mlp": cfg.mlp_hidden_size,
        "n_ctx": int(weights["pos_embed.W_pos"].shape[0]),
        "d_vocab": int(weights["embed.W_E"].shape[0]),
        "d_vocab_out": int(weights["unembed.W_U"].shape[1]),
        "act_fn": "relu",
        "normalization": None,
        "causal": False,
        "attn_scale": float(np.sqrt(cfg.key_size)),
        "dtype": "float32",
        "output_kind": "numerical" if numerical else "categorical",
        "output_readout": (
            "residual @ unembed.W_U[:, 0] (one residual direction, read directly)"
            if numerical
            else "argmax over residual @ unembed.W_U (+ b_U, zero) per position"
        ),
        "output_label": compiled.program.label,
        "bos_position_output": "meaningless (position 0 is BOS; tracr decodes it as BOS)",
        "empty": empty_halves(weights, cfg.num_layers),
        "ground_truth": ground_truth(compiled),
        "residual_labels": list(model.residual_labels),
    }
    id_order = sorted(model.input_encoder.encoding_map.items(), key=lambda kv: kv[1])
    encodings = {
        "input": [str(tok) for tok, _ in id_order],
        "output": output_strings(compiled),
        "bos": BOS,
        "pad": PAD,
        "pad_note": "tracr does not mask PAD; examples are unpadded, of any length 1..max_seq_len",
        "max_seq_len": spec.max_seq_len,
    }
    inputs, exhaustive = example_inputs(spec)
    examples = run_tracr(compiled, inputs)
    program = {
        "name": spec.name,
        "description": inspect.getdoc(spec.build),
        "source": program_source(spec),
        "vocab": [json_value(v) for v in spec.vocab],
        "max_seq_len": spec.max_seq_len,
        "compiler_bos": BOS,
        "compiler_pad": PAD,
        "causal": False,
        "mlp_exactness": 100,
        "examples_cover": "whole input space" if exhaustive else f"{N_RANDOM} seeded random inputs",
        "examples_note": "model input is [BOS, *input]; output[0] is the BOS string "
        "(meaningless), output[1:] are tracr's decoded values",
        "examples": [{k: v for k, v in ex.items() if k != "residual"} for ex in examples],
    }
    logits = {}
    for i, ex in enumerate(examples[:N_LOGIT_EXAMPLES]):
        logits[f"residual.{i}"] = ex["residual"]
        logits[f"logits.{i}"] = ex["residual"] @ weights["unembed.W_U"]

    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out_dir / "model.safetensors"), metadata={"format": FORMAT})
    save_file(logits, str(out_dir / "examples_logits.safetensors"))
    for name, content in (("config", config), ("encodings", encodings), ("program", program)):
        (out_dir / f"{name}.json").write_text(dump_json(content) + "\n")
    return config


def dump_json(value: Any, indent: str = "") -> str:
    """Readable but small JSON: dicts one key a line, flat lists and list items on one line."""
    inner = indent + " "
    if isinstance(value, dict) and value:
        items = [f"{inner}{json.dumps(k)}: {dump_json(v, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(value, list) and any(isinstance(v, list) for v in value):
        items = [inner + dump_json(v, inner) for v in value]
        return "[\n" + ",\n".join(items) + "\n" + indent + "]"
    if isinstance(value, list) and any(isinstance(v, dict) for v in value):
        # One example (a dict) a line: thousands of them stay greppable and diffable.
        items = [inner + json.dumps(v) for v in value]
        return "[\n" + ",\n".join(items) + "\n" + indent + "]"
    return json.dumps(value)


# --- The numpy check: a plain forward pass over the saved files.


def numpy_forward(weights: dict[str, np.ndarray], config: dict, ids: list[int]) -> np.ndarray:
    """Final residual [n_tokens, d_model] in float64: embed, (non-causal attention + ReLU MLP)*L."""
    w = {k: v.astype(np.float64) for k, v in weights.items()}
    x = w["embed.W_E"][ids] + w["pos_embed.W_pos"][: len(ids)]
    for layer in range(config["n_layers"]):
        x = x + attention(w, f"blocks.{layer}.attn.", x, config["attn_scale"])
        p = f"blocks.{layer}.mlp."
        hidden = np.maximum(x @ w[p + "W_in"] + w[p + "b_in"], 0.0)
        x = x + hidden @ w[p + "W_out"] + w[p + "b_out"]
    return x


def attention(w: dict[str, np.ndarray], p: str, x: np.ndarray, scale: float) -> np.ndarray:
    """Multi-head attention, softmax over all positions (tracr compiles non-causally)."""
    q = np.einsum("td,hde->hte", x, w[p + "W_Q"]) + w[p + "b_Q"][:, None, :]
    k = np.einsum("td,hde->hte", x, w[p + "W_K"]) + w[p + "b_K"][:, None, :]
    v = np.einsum("td,hde->hte", x, w[p + "W_V"]) + w[p + "b_V"][:, None, :]
    scores = np.einsum("hqe,hke->hqk", q, k) / scale
    scores = scores - scores.max(axis=-1, keepdims=True)
    pattern = np.exp(scores)
    pattern = pattern / pattern.sum(axis=-1, keepdims=True)
    z = np.einsum("hqk,hke->hqe", pattern, v)
    return np.einsum("hqe,hed->qd", z, w[p + "W_O"]) + w[p + "b_O"]


def check_program(out_dir: Path) -> dict[str, Any]:
    """Re-runs every stored example from the saved files; compares with tracr's outputs."""
    config = json.loads((out_dir / "config.json").read_text())
    program = json.loads((out_dir / "program.json").read_text())
    weights = load_file(str(out_dir / "model.safetensors"))
    stored = load_file(str(out_dir / "examples_logits.safetensors"))
    numerical = config["output_kind"] == "numerical"
    w_u = weights["unembed.W_U"].astype(np.float64)
    mismatches, worst_residual, worst_logit, min_margin = 0, 0.0, 0.0, np.inf
    for i, ex in enumerate(program["examples"]):
        residual = numpy_forward(weights, config, ex["input_ids"])
        logits = residual @ w_u + weights["unembed.b_U"]
        if f"residual.{i}" in stored:
            worst_residual = max(worst_residual, np.abs(residual - stored[f"residual.{i}"]).max())
            worst_logit = max(worst_logit, np.abs(logits - stored[f"logits.{i}"]).max())
        if numerical:
            want = np.array(ex["output"][1:], dtype=np.float64)
            got = logits[1:, 0]
            mismatches += int(np.abs(got - want).max() > RESIDUAL_ATOL)
        else:
            got_ids = logits[1:].argmax(axis=-1)
            mismatches += int(list(got_ids) != ex["output_ids"][1:])
            if logits.shape[1] > 1:  # how far each winning logit is from the runner-up
                top2 = np.sort(logits[1:], axis=-1)[:, -2:]
                min_margin = min(min_margin, float((top2[:, 1] - top2[:, 0]).min()))
    ok = mismatches == 0 and worst_residual <= RESIDUAL_ATOL and worst_logit <= RESIDUAL_ATOL
    return {
        "ok": bool(ok),
        "examples": len(program["examples"]),
        "mismatches": mismatches,
        "max_residual_diff": float(worst_residual),
        "max_logit_diff": float(worst_logit),
        "min_margin": None if numerical else float(min_margin),
    }


# --- Command line.


def dir_bytes(path: Path) -> int:
    """Total size of the files in a directory."""
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


def main(argv: list[str] | None = None) -> int:
    """Compiles (and by default checks) the suite; prints one line per program."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    parser.add_argument("--only", action="append", help="compile only this program (repeatable)")
    parser.add_argument("--no-check", action="store_true", help="skip the numpy re-check")
    args = parser.parse_args(argv)
    specs = [s for s in SUITE if not args.only or s.name in args.only]
    if args.only and len(specs) != len(set(args.only)):
        known = ", ".join(s.name for s in SUITE)
        parser.error(f"unknown program in --only {args.only}; known: {known}")
    failed = False
    for spec in specs:
        out_dir = args.out / spec.name
        try:
            config = write_program(compile_program(spec), out_dir)
        except Exception as error:  # a program that fails to compile is reported, not fatal
            print(f"{spec.name}: FAILED to compile: {type(error).__name__}: {error}")
            failed = True
            continue
        line = (
            f"{spec.name}: layers={config['n_layers']} heads={config['n_heads']} "
            f"d_model={config['d_model']} d_head={config['d_head']} d_mlp={config['d_mlp']} "
            f"n_ctx={config['n_ctx']} vocab={config['d_vocab']}->{config['d_vocab_out']} "
            f"({config['output_kind']}) empty={config['empty']} bytes={dir_bytes(out_dir)}"
        )
        if not args.no_check:
            result = check_program(out_dir)
            failed = failed or not result["ok"]
            line += f" check={result}"
        print(line, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
