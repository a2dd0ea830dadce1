"""ComputeGraph: the nodes, ports and edges of a transformer's computational graph.

Sources write to the residual stream; destinations read it:

    sources       input            token + position embeddings
                  a{l}.h{h}        one attention head's output (W_O applied, b_O excluded)
                  m{l}             one MLP's output
    destinations  a{l}.h{h}<q>     head h's query input (likewise <k> and <v>)
                  m{l}             MLP l's input
                  logits           the final residual stream (before the final norm)

An edge u -> v exists when u is computed before v reads the residual stream. Everything dense
lives in [n_src, n_dst] tensors (``valid`` here; scores and masks elsewhere); nodes and edges
are views computed from indices. The index arithmetic is EAP-IG's, so graphs interoperate:

    src(input) = 0          src(a{l}.h{h}) = 1 + l(H+1) + h          src(m{l}) = 1 + l(H+1) + H
    dst(a{l}.h{h}<q>) = l(3H+1) + h,  <k>: + H,  <v>: + 2H          dst(m{l}) = l(3H+1) + 3H
    dst(logits) = L(3H+1)

giving n_src = 1 + L(H+1), n_dst = L(3H+1) + 1 (GPT-2 small: 157 x 445, 32,491 valid edges).

Variants, each following how the model computes:
- attention-only models have no m{l} nodes (n_src = 1 + LH, n_dst = 3LH + 1);
- parallel attention and MLP (GPT-J, GPT-NeoX/Pythia): m{l} reads the same residual as the
  heads of layer l, so a{l}.h* -> m{l} edges do not exist;
- grouped-query attention (n_kv_heads = G < H): query heads of one group share one key and one
  value input, so there is one <k> and one <v> port per group, named a{l}.g{g}<k>, a{l}.g{g}<v>
  (patching a group's key input changes all its heads at once: the model offers no finer cut).
  Then each layer has H + 2G + 1 destinations instead of 3H + 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch


@dataclass(frozen=True)
class GraphShape:
    """The architecture facts the graph depends on."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    has_mlp: bool = True
    parallel_attn_mlp: bool = False

    def __post_init__(self) -> None:
        if self.n_layers < 1 or self.n_heads < 1:
            raise ValueError("a graph needs at least one layer and one head")
        if self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_kv_heads ({self.n_kv_heads}) must divide n_heads ({self.n_heads})")


@dataclass(frozen=True)
class Node:
    """A view of one node: its name, kind, layer and head (None where it has none)."""

    name: str
    kind: str  # "input" | "head" | "mlp" | "logits"
    layer: int | None = None
    head: int | None = None


@dataclass(frozen=True)
class Port:
    """A destination: a node's input, with the residual-stream read it stands for."""

    name: str  # e.g. "a3.h1<q>", "a3.g0<k>", "m2", "logits"
    node: str  # the node that reads: "a3.h1", "a3.g0" (a key/value group), "m2", "logits"
    kind: str  # "q" | "k" | "v" | "mlp" | "logits"
    layer: int | None = None
    index: int | None = None  # head for q; kv group for k/v (the head itself without GQA)


class ComputeGraph:
    """Nodes, ports and valid edges of one architecture; dense index arithmetic."""

    def __init__(self, shape: GraphShape):
        self.shape = shape
        L, H, G = shape.n_layers, shape.n_heads, shape.n_kv_heads
        self.n_layers, self.n_heads, self.n_kv_heads = L, H, G
        self.src_per_layer = H + (1 if shape.has_mlp else 0)
        self.dst_per_layer = H + 2 * G + (1 if shape.has_mlp else 0)
        self.n_src = 1 + L * self.src_per_layer
        self.n_dst = L * self.dst_per_layer + 1

    # --- construction ------------------------------------------------------------------------

    @classmethod
    def from_model(cls, model: Any) -> ComputeGraph:
        """The graph of a loaded model (``acd.load_model``)."""
        spec = model.spec
        return cls(
            GraphShape(
                n_layers=spec.n_layers,
                n_heads=spec.n_heads,
                n_kv_heads=spec.n_kv_heads,
                has_mlp=spec.has_mlp,
                parallel_attn_mlp=spec.parallel_attn_mlp,
            )
        )

    @classmethod
    def from_config(cls, config: Any) -> ComputeGraph:
        """The graph from a Hugging Face config (``GPT2Config``, ``LlamaConfig``, ...) or a
        TransformerLens config, without loading any weights."""
        get = (
            (lambda k: config.get(k))
            if isinstance(config, dict)
            else (lambda k: getattr(config, k, None))
        )
        n_layers = _first(get, "n_layers", "num_hidden_layers", "n_layer", "num_layers")
        n_heads = _first(get, "n_heads", "num_attention_heads", "n_head")
        if n_layers is None or n_heads is None:
            raise ValueError("the config names no number of layers or heads")
        n_kv = _first(get, "n_key_value_heads", "num_key_value_heads") or n_heads
        attn_only = bool(get("attn_only"))
        parallel = bool(
            get("parallel_attn_mlp") or get("use_parallel_residual") or get("parallel_attn")
        )
        if get("model_type") == "gptj":  # GPT-J always computes attention and MLP in parallel
            parallel = True
        return cls(
            GraphShape(
                n_layers=int(n_layers),
                n_heads=int(n_heads),
                n_kv_heads=int(n_kv),
                has_mlp=not attn_only,
                parallel_attn_mlp=parallel,
            )
        )

    # --- index arithmetic --------------------------------------------------------------------

    def src_input(self) -> int:
        return 0

    def src_head(self, layer: int, head: int) -> int:
        return 1 + layer * self.src_per_layer + head

    def src_mlp(self, layer: int) -> int:
        self._need_mlp()
        return 1 + layer * self.src_per_layer + self.n_heads

    def dst_q(self, layer: int, head: int) -> int:
        return layer * self.dst_per_layer + head

    def dst_k(self, layer: int, group: int) -> int:
        return layer * self.dst_per_layer + self.n_heads + group

    def dst_v(self, layer: int, group: int) -> int:
        return layer * self.dst_per_layer + self.n_heads + self.n_kv_heads + group

    def dst_mlp(self, layer: int) -> int:
        self._need_mlp()
        return layer * self.dst_per_layer + self.n_heads + 2 * self.n_kv_heads

    def dst_logits(self) -> int:
        return self.n_dst - 1

    def kv_group(self, head: int) -> int:
        """The key/value group that query head ``head`` reads."""
        return head // (self.n_heads // self.n_kv_heads)

    def src_layer_slice(self, layer: int) -> slice:
        """Source indices of layer ``layer``'s heads (and its MLP, last)."""
        start = 1 + layer * self.src_per_layer
        return slice(start, start + self.src_per_layer)

    def dst_layer_slice(self, layer: int) -> slice:
        """Destination indices of layer ``layer``: q ports, k ports, v ports, then the MLP."""
        start = layer * self.dst_per_layer
        return slice(start, start + self.dst_per_layer)

    def _need_mlp(self) -> None:
        if not self.shape.has_mlp:
            raise ValueError("this graph is attention-only: it has no MLP nodes")

    # --- names -------------------------------------------------------------------------------

    @cached_property
    def sources(self) -> list[Node]:
        """Every source, in index order."""
        nodes = [Node("input", "input")]
        for layer in range(self.n_layers):
            nodes += [Node(f"a{layer}.h{h}", "head", layer, h) for h in range(self.n_heads)]
            if self.shape.has_mlp:
                nodes.append(Node(f"m{layer}", "mlp", layer))
        return nodes

    @cached_property
    def destinations(self) -> list[Port]:
        """Every destination port, in index order."""
        grouped = self.n_kv_heads != self.n_heads
        ports = []
        for layer in range(self.n_layers):
            ports += [
                Port(f"a{layer}.h{h}<q>", f"a{layer}.h{h}", "q", layer, h)
                for h in range(self.n_heads)
            ]
            for kind in ("k", "v"):
                for g in range(self.n_kv_heads):
                    node = f"a{layer}.g{g}" if grouped else f"a{layer}.h{g}"
                    ports.append(Port(f"{node}<{kind}>", node, kind, layer, g))
            if self.shape.has_mlp:
                ports.append(Port(f"m{layer}", f"m{layer}", "mlp", layer))
        ports.append(Port("logits", "logits", "logits"))
        return ports

    @cached_property
    def src_index(self) -> dict[str, int]:
        return {node.name: i for i, node in enumerate(self.sources)}

    @cached_property
    def dst_index(self) -> dict[str, int]:
        return {port.name: i for i, port in enumerate(self.destinations)}

    @cached_property
    def nodes(self) -> list[str]:
        """Node names: the sources, then the nodes that only read (logits; GQA kv groups)."""
        names = [n.name for n in self.sources]
        seen = set(names)
        for port in self.destinations:
            if port.node not in seen:
                seen.add(port.node)
                names.append(port.node)
        return names

    @property
    def n_nodes(self) -> int:
        return len(self.nodes)

    # --- edges -------------------------------------------------------------------------------

    @cached_property
    def valid(self) -> torch.Tensor:
        """[n_src, n_dst] bool: True where the source is computed before the destination reads."""
        valid = torch.zeros(self.n_src, self.n_dst, dtype=torch.bool)
        src_layer = torch.tensor([-1] + [n.layer for n in self.sources[1:]])  # input: layer -1
        src_is_head = torch.tensor([n.kind == "head" for n in self.sources])
        for j, port in enumerate(self.destinations):
            if port.kind == "logits":
                valid[:, j] = True
            elif port.kind == "mlp" and not self.shape.parallel_attn_mlp:
                # Sequential block: the MLP reads after its own layer's attention.
                valid[:, j] = (src_layer < port.layer) | (src_is_head & (src_layer == port.layer))
            else:  # attention input, or a parallel block's MLP: everything from earlier layers
                valid[:, j] = src_layer < port.layer
        return valid

    @property
    def n_edges(self) -> int:
        return int(self.valid.sum())

    def edge_index(self, src: str, dst: str) -> tuple[int, int]:
        """(source index, destination index) of the edge src -> dst, by name."""
        try:
            i, j = self.src_index[src], self.dst_index[dst]
        except KeyError as err:
            raise KeyError(f"no node or port named {err.args[0]!r} in this graph") from None
        if not self.valid[i, j]:
            raise KeyError(f"{src} -> {dst} is not an edge: {src} is not computed before {dst}")
        return i, j

    def edge_names(self, mask: torch.Tensor) -> list[tuple[str, str]]:
        """Names of the edges where ``mask`` [n_src, n_dst] is True (and the edge is valid),
        in index order."""
        if mask.shape != (self.n_src, self.n_dst):
            raise ValueError(
                f"mask has shape {tuple(mask.shape)}, expected ({self.n_src}, {self.n_dst})"
            )
        pairs = (mask.bool().cpu() & self.valid).nonzero().tolist()
        return [(self.sources[i].name, self.destinations[j].name) for i, j in pairs]

    def mask_from_edges(self, edges: list[tuple[str, str]]) -> torch.Tensor:
        """[n_src, n_dst] bool mask with the named edges set."""
        mask = torch.zeros(self.n_src, self.n_dst, dtype=torch.bool)
        for src, dst in edges:
            mask[self.edge_index(src, dst)] = True
        return mask

    def __repr__(self) -> str:
        s = self.shape
        return (
            f"ComputeGraph(layers={s.n_layers}, heads={s.n_heads}, kv_heads={s.n_kv_heads}, "
            f"mlp={s.has_mlp}, parallel={s.parallel_attn_mlp}, nodes={self.n_nodes}, "
            f"edges={self.n_edges})"
        )


def _first(get, *keys: str) -> Any:
    for key in keys:
        value = get(key)
        if value is not None:
            return value
    return None
