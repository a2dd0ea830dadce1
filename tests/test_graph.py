"""ComputeGraph: sizes against published counts, and edges against real interventions."""

from __future__ import annotations

import re

import pytest
import torch
from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig

from acd import load_model
from acd.graph import ComputeGraph, GraphShape


def test_gpt2_small_has_eap_igs_counts():
    graph = ComputeGraph.from_config(GPT2Config())  # 12 layers x 12 heads
    assert (graph.n_src, graph.n_dst) == (157, 445)
    assert graph.n_nodes == 158
    assert graph.n_edges == 32491


def test_index_arithmetic_matches_eap_ig_formulas():
    graph = ComputeGraph.from_config(GPT2Config())
    H = 12
    for layer, head in [(0, 0), (3, 7), (11, 11)]:
        assert graph.src_index[f"a{layer}.h{head}"] == 1 + layer * (H + 1) + head
        assert graph.dst_index[f"a{layer}.h{head}<q>"] == layer * (3 * H + 1) + head
        assert graph.dst_index[f"a{layer}.h{head}<k>"] == layer * (3 * H + 1) + H + head
        assert graph.dst_index[f"a{layer}.h{head}<v>"] == layer * (3 * H + 1) + 2 * H + head
        assert graph.src_index[f"m{layer}"] == 1 + layer * (H + 1) + H
        assert graph.dst_index[f"m{layer}"] == layer * (3 * H + 1) + 3 * H
    assert graph.dst_index["logits"] == 12 * (3 * H + 1)


def _count_edges_by_hand(n_layers: int, n_heads: int, mlp: bool, parallel: bool) -> int:
    """Each attention port reads input and every node of earlier layers; a sequential MLP also
    reads its own layer's heads; logits read every source."""
    per_layer = n_heads + (1 if mlp else 0)
    total = 0
    for layer in range(n_layers):
        earlier = 1 + layer * per_layer
        total += 3 * n_heads * earlier
        if mlp:
            total += earlier + (0 if parallel else n_heads)
    return total + 1 + n_layers * per_layer


@pytest.mark.parametrize(
    ("config", "mlp", "parallel"),
    [
        (GPT2Config(n_layer=6, n_head=8), True, False),
        (GPTNeoXConfig(num_hidden_layers=6, num_attention_heads=8), True, True),
        ({"n_layers": 4, "n_heads": 8, "attn_only": True}, False, False),  # TL-style config
    ],
)
def test_edge_counts_follow_the_architecture(config, mlp, parallel):
    graph = ComputeGraph.from_config(config)
    assert graph.n_edges == _count_edges_by_hand(graph.n_layers, graph.n_heads, mlp, parallel)
    assert graph.shape.has_mlp == mlp and graph.shape.parallel_attn_mlp == parallel


def test_grouped_query_attention_has_one_key_and_value_port_per_group():
    graph = ComputeGraph.from_config(
        LlamaConfig(num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2)
    )
    ports = [p.name for p in graph.destinations if p.layer == 1]
    assert ports[:8] == [f"a1.h{h}<q>" for h in range(8)]
    assert ports[8:] == ["a1.g0<k>", "a1.g1<k>", "a1.g0<v>", "a1.g1<v>", "m1"]
    assert graph.n_dst == 2 * (8 + 2 * 2 + 1) + 1
    assert [graph.kv_group(h) for h in range(8)] == [0, 0, 0, 0, 1, 1, 1, 1]


def test_names_and_masks_round_trip():
    graph = ComputeGraph.from_config(GPT2Config(n_layer=2, n_head=2))
    edges = [("input", "a1.h0<k>"), ("a0.h1", "m0"), ("m1", "logits")]
    mask = graph.mask_from_edges(edges)
    assert graph.edge_names(mask) == edges
    with pytest.raises(KeyError, match="not an edge"):
        graph.edge_index("m1", "a0.h0<q>")
    with pytest.raises(KeyError, match="no node or port named 'a9.h0'"):
        graph.edge_index("a9.h0", "logits")


def _destination_reads(model, graph: ComputeGraph, perturb_source: int | None) -> torch.Tensor:
    """What every destination reads, [n_dst, pos, d], in one run where source
    ``perturb_source`` (or none) has random noise added to its output. Hand-written hooks."""
    tokens = torch.tensor([[0, 5, 6, 7, 8, 9]])
    torch.manual_seed(0)
    reads: dict[int, torch.Tensor] = {}

    def perturb(index):
        def hook(tensor, hook):
            if index is None or index != perturb_source:
                return tensor
            return tensor + torch.randn_like(tensor)

        return hook

    def perturb_head(layer):
        def hook(tensor, hook):
            out = tensor.clone()
            for h in range(graph.n_heads):
                if graph.src_head(layer, h) == perturb_source:
                    out[:, :, h] += torch.randn_like(out[:, :, h])
            return out

        return hook

    def record(indices):
        def hook(tensor, hook):
            if tensor.dim() == 4:  # [b, p, port, d]
                for i, j in enumerate(indices):
                    reads[j] = tensor[0, :, i].clone()
            else:
                reads[indices[0]] = tensor[0].clone()

        return hook

    hooks = [(model.hook_embed_out(), perturb(graph.src_input()))]
    for layer in range(graph.n_layers):
        hooks.append((model.hook_head_result(layer), perturb_head(layer)))
        hooks.append(
            (
                model.hook_q_input(layer),
                record([graph.dst_q(layer, h) for h in range(graph.n_heads)]),
            )
        )
        kv = range(graph.n_kv_heads)
        hooks.append((model.hook_k_input(layer), record([graph.dst_k(layer, g) for g in kv])))
        hooks.append((model.hook_v_input(layer), record([graph.dst_v(layer, g) for g in kv])))
        if graph.shape.has_mlp:
            hooks.append((model.hook_mlp_out(layer), perturb(graph.src_mlp(layer))))
            hooks.append((model.hook_mlp_in(layer), record([graph.dst_mlp(layer)])))
    hooks.append((model.hook_final_resid(), record([graph.dst_logits()])))
    model.bridge.run_with_hooks(tokens, fwd_hooks=hooks)
    return torch.stack([reads[j] for j in range(graph.n_dst)])


@pytest.mark.parametrize("kind", ["gpt2", "llama", "neox"])
def test_valid_edges_are_exactly_the_dependencies_of_the_real_model(make_tiny_model_dir, kind):
    """Brute force: perturb each source's output, see which destination inputs change."""
    model = load_model(str(make_tiny_model_dir(kind)), device="cpu")
    graph = ComputeGraph.from_model(model)
    base = _destination_reads(model, graph, None)
    observed = torch.zeros(graph.n_src, graph.n_dst, dtype=torch.bool)
    for u in range(graph.n_src):
        changed = _destination_reads(model, graph, u)
        observed[u] = (changed - base).abs().flatten(1).amax(dim=1) > 1e-6
    assert torch.equal(observed, graph.valid), graph.edge_names(observed ^ graph.valid)


# --- the node model: indices against expectations built from names and configs --------------

_PORT_NAME = re.compile(r"^a(\d+)\.([hg])(\d+)<([qkv])>$")


def _expected_from_names(graph: ComputeGraph):
    """(port -> computing nodes, port -> named node, port -> block), brute force from the port
    and node names alone: a{l}.h{h}<x> is read by head h of layer l, a{l}.g{g}<x> by every
    query head of layer l whose group h // (H / G) is g."""
    per_group = graph.n_heads // graph.n_kv_heads
    names = graph.nodes
    readers, named, blocks = [], [], []
    for port in graph.destinations:
        match = _PORT_NAME.match(port.name)
        if match is None:  # m{l} or logits: the port is named after its node
            readers.append({names.index(port.name)})
            named.append(names.index(port.name))
            layer = graph.n_layers if port.name == "logits" else int(port.name[1:])
            blocks.append(layer)
            continue
        layer, letter, index = int(match[1]), match[2], int(match[3])
        if letter == "h":
            readers.append({names.index(f"a{layer}.h{index}")})
        else:
            heads = [h for h in range(graph.n_heads) if h // per_group == index]
            readers.append({names.index(f"a{layer}.h{h}") for h in heads})
        named.append(names.index(port.name.split("<")[0]))
        blocks.append(layer)
    return readers, named, blocks


GQA_CONFIG = LlamaConfig(num_hidden_layers=3, num_attention_heads=8, num_key_value_heads=2)


@pytest.mark.parametrize(
    "config",
    [GQA_CONFIG, GPT2Config(n_layer=3, n_head=4), {"n_layers": 2, "n_heads": 4, "attn_only": True}],
)
def test_port_and_node_indices_match_a_brute_force_from_names(config):
    graph = ComputeGraph.from_config(config)
    readers, named, blocks = _expected_from_names(graph)
    assert [set(nodes) for nodes in graph.port_nodes] == readers
    for n in range(graph.n_nodes):  # node_ports is the exact inverse, in index order
        assert list(graph.node_ports[n]) == [j for j in range(graph.n_dst) if n in readers[j]]
    assert graph.dst_node_ids.tolist() == named
    assert graph.dst_layers.tolist() == blocks
    assert [graph.nodes[i] for i in named] == [p.node for p in graph.destinations]


def test_gqa_key_value_groups_are_nodes_that_list_their_heads():
    graph = ComputeGraph.from_config(GQA_CONFIG)  # 8 query heads, 2 key/value groups
    groups = [n for n in graph.node_views if n.kind == "kv_group"]
    assert [g.name for g in groups] == [f"a{layer}.g{g}" for layer in range(3) for g in range(2)]
    assert [g.heads for g in groups[:2]] == [(0, 1, 2, 3), (4, 5, 6, 7)]
    assert all(g.layer == int(g.name[1]) and g.group == int(g.name[-1]) for g in groups)
    heads = [n for n in graph.node_views if n.kind == "head"]
    assert all(h.head in groups[h.group].heads for h in heads)
    for g in groups:  # a group computes nothing: its ports feed its heads
        node_id = graph.node_index[g.name]
        assert graph.node_ports[node_id] == ()
        assert all(node_id not in nodes for nodes in graph.port_nodes)
    assert graph.nodes[-1] == "logits" and graph.node("a1.g1") is groups[3]


def test_gpt2_small_node_model_has_the_counts_of_its_config():
    config = GPT2Config()
    L, H = config.n_layer, config.n_head
    graph = ComputeGraph.from_config(config)
    kinds = [n.kind for n in graph.node_views]
    assert len(kinds) == graph.n_nodes == 1 + L * (H + 1) + 1
    assert {k: kinds.count(k) for k in set(kinds)} == {
        "input": 1,
        "head": L * H,
        "mlp": L,
        "logits": 1,
    }
    assert all(len(nodes) == 1 for nodes in graph.port_nodes)  # no GQA: one reader per port
    by_kind = {"input": 0, "head": 3, "mlp": 1, "logits": 1}  # q, k, v of a head
    assert [len(p) for p in graph.node_ports] == [by_kind[k] for k in kinds]
    assert torch.bincount(graph.dst_layers).tolist() == [3 * H + 1] * L + [1]
    assert torch.bincount(graph.src_layers + 1).tolist() == [1] + [H + 1] * L
    assert graph.node_layers.tolist() == [*graph.src_layers.tolist(), L]
    assert int(graph.dst_n_before.sum()) == graph.n_edges == 32491


@pytest.mark.parametrize(
    "shape",
    [
        GraphShape(n_layers=3, n_heads=4, n_kv_heads=4),
        GraphShape(n_layers=3, n_heads=4, n_kv_heads=2, parallel_attn_mlp=True),
        GraphShape(n_layers=2, n_heads=2, n_kv_heads=1, has_mlp=False),
    ],
)
def test_n_before_and_valid_follow_the_layer_rule(shape):
    """The rule of the module docstring, by layers: a port reads every source of earlier
    layers (and input); a sequential MLP also its own layer's heads; logits everything."""
    graph = ComputeGraph(shape)
    expected = torch.zeros(graph.n_src, graph.n_dst, dtype=torch.bool)
    for i, src in enumerate(graph.sources):
        src_layer = -1 if src.layer is None else src.layer
        for j, port in enumerate(graph.destinations):
            same_layer_head = src.kind == "head" and src_layer == port.layer
            sequential_mlp = port.kind == "mlp" and not shape.parallel_attn_mlp
            expected[i, j] = (
                port.kind == "logits"
                or src_layer < port.layer
                or (sequential_mlp and same_layer_head)
            )
    assert torch.equal(graph.valid, expected)
    assert graph.dst_n_before.tolist() == expected.sum(dim=0).tolist()


def test_sources_are_the_first_nodes_and_lookups_are_cached():
    graph = ComputeGraph.from_config(GQA_CONFIG)
    assert graph.node_views[: graph.n_src] == graph.sources
    assert graph.src_node_ids.tolist() == list(range(graph.n_src))
    assert all(graph.node_index[n.name] == graph.src_index[n.name] for n in graph.sources)
    assert graph.node_ports is graph.node_ports and graph.dst_layers is graph.dst_layers
    with pytest.raises(KeyError, match="no node named 'a9.h0'"):
        graph.node("a9.h0")
