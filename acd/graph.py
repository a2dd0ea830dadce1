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

The node model (built once per graph and cached; the graph is immutable):

    graph.nodes / node_views     every node: the sources in index order (node id = source index),
                                 then, with GQA, the key/value groups a{l}.g{g}, then logits
    Node(kind="kv_group")        a group of query heads sharing one <k> and one <v> port; it
                                 lists its heads (``Node.heads``) and computes nothing itself
    dst_node_ids [n_dst]         the node each port is named after (``Port.node``)
    port_nodes / node_ports      which nodes compute from which ports: a group's k/v port feeds
                                 every head of the group (the GQA expansion, done here once)
    src_layers, dst_layers, node_layers   the block of each (input -1, logits n_layers)
    dst_n_before [n_dst]         how many sources are computed before each port reads
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
    """A view of one node: its name, kind, layer, head and key/value group (None where it has
    none; ``layer`` is None for input and logits, see ``ComputeGraph.node_layers``).

    A ``kv_group`` node (grouped-query attention only) stands for the shared key and value
    input of the query heads in ``heads``; a head's ``group`` is the group whose k/v it reads
    (the head itself without GQA).
    """

    name: str
    kind: str  # "input" | "head" | "mlp" | "logits" | "kv_group"
    layer: int | None = None
    head: int | None = None
    group: int | None = None  # heads and kv_group nodes
    heads: tuple[int, ...] = ()  # kv_group nodes: the query heads (within the layer) it serves


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
            nodes += [
                Node(f"a{layer}.h{h}", "head", layer, h, group=self.kv_group(h))
                for h in range(self.n_heads)
            ]
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
    def node_views(self) -> list[Node]:
        """Every node, in ``nodes`` order: the sources (so a source's node id is its source
        index), then with GQA each layer's key/value groups, then ``logits`` last."""
        nodes = list(self.sources)
        if self.n_kv_heads != self.n_heads:
            for layer in range(self.n_layers):
                for g in range(self.n_kv_heads):
                    heads = tuple(self._group_heads(g))
                    nodes.append(Node(f"a{layer}.g{g}", "kv_group", layer, group=g, heads=heads))
        nodes.append(Node("logits", "logits"))
        return nodes

    @cached_property
    def nodes(self) -> list[str]:
        """Node names: the sources, then the nodes that only read (GQA kv groups; logits)."""
        return [node.name for node in self.node_views]

    @property
    def n_nodes(self) -> int:
        return len(self.node_views)

    @cached_property
    def node_index(self) -> dict[str, int]:
        """Node id (index into ``nodes``) by name."""
        return {name: i for i, name in enumerate(self.nodes)}

    def node(self, name: str) -> Node:
        """The node called ``name`` (a source, a GQA kv group or ``logits``)."""
        try:
            return self.node_views[self.node_index[name]]
        except KeyError:
            raise KeyError(f"no node named {name!r} in this graph") from None

    # --- relations between nodes and ports (dense, one entry per index) -----------------------

    @cached_property
    def src_node_ids(self) -> torch.Tensor:
        """[n_src] long: the node id of each source (sources come first, so it is the index)."""
        return torch.arange(self.n_src)

    @cached_property
    def dst_node_ids(self) -> torch.Tensor:
        """[n_dst] long: the id of the node each port is named after (``Port.node``): the head
        of a q port (and of a k/v port without GQA), the kv group of a GQA k/v port, the MLP,
        or logits."""
        return torch.tensor([self.node_index[port.node] for port in self.destinations])

    @cached_property
    def port_nodes(self) -> list[tuple[int, ...]]:
        """For each port, the ids of the nodes that compute from it: a q port's head, every
        head of a k/v port's group (with GQA one port feeds several heads; without, just its
        head), the MLP, or logits. Never a kv_group node: a group computes nothing."""
        readers: list[tuple[int, ...]] = []
        for port in self.destinations:
            layer, index = port.layer, port.index
            if port.kind not in ("q", "k", "v"):  # MLP or logits: named after its reader
                readers.append((self.node_index[port.node],))
                continue
            assert layer is not None and index is not None  # attention ports have both
            if port.kind == "q":
                readers.append((self.src_head(layer, index),))
            else:  # a key/value port feeds every head of its group
                heads = self._group_heads(index)
                readers.append(tuple(self.src_head(layer, h) for h in heads))
        return readers

    @cached_property
    def node_ports(self) -> list[tuple[int, ...]]:
        """For each node id, the ports it computes from, in index order (the inverse of
        ``port_nodes``): a head's q port and its group's k and v ports, an MLP's port, logits'
        port; none for ``input`` and for kv_group nodes (whose ports feed their heads)."""
        ports: list[list[int]] = [[] for _ in range(self.n_nodes)]
        for j, readers in enumerate(self.port_nodes):
            for node in readers:
                ports[node].append(j)
        return [tuple(p) for p in ports]

    @cached_property
    def src_layers(self) -> torch.Tensor:
        """[n_src] long: the block of each source (input -1)."""
        return self.node_layers[: self.n_src]

    @cached_property
    def dst_layers(self) -> torch.Tensor:
        """[n_dst] long: the block each port belongs to (logits n_layers)."""
        return torch.tensor(
            [self.n_layers if port.layer is None else port.layer for port in self.destinations]
        )

    @cached_property
    def node_layers(self) -> torch.Tensor:
        """[n_nodes] long: the block of each node (input -1, logits n_layers)."""
        layers = []
        for node in self.node_views:
            if node.kind == "input":
                layers.append(-1)
            elif node.kind == "logits":
                layers.append(self.n_layers)
            else:
                layers.append(node.layer)
        return torch.tensor(layers)

    @cached_property
    def dst_n_before(self) -> torch.Tensor:
        """[n_dst] long: how many sources are computed before each port reads. Sources are in
        forward order, so these are exactly the sources 0 .. n_before - 1 (its valid edges)."""
        counts = []
        for port in self.destinations:
            if port.kind == "logits":
                counts.append(self.n_src)
                continue
            assert port.layer is not None  # every port but logits belongs to a block
            earlier = self.src_layer_slice(port.layer).start  # input and all earlier layers
            if port.kind == "mlp" and not self.shape.parallel_attn_mlp:
                earlier += self.n_heads  # a sequential MLP reads after its own layer's heads
            counts.append(earlier)
        return torch.tensor(counts)

    def _group_heads(self, group: int) -> range:
        """The query heads (within a layer) that read key/value group ``group``."""
        per_group = self.n_heads // self.n_kv_heads
        return range(group * per_group, (group + 1) * per_group)

    # --- edges -------------------------------------------------------------------------------

    @cached_property
    def valid(self) -> torch.Tensor:
        """[n_src, n_dst] bool: True where the source is computed before the destination reads."""
        return torch.arange(self.n_src)[:, None] < self.dst_n_before[None, :]

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
