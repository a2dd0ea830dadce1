"""ComputeGraph: sizes against published counts, and edges against real interventions."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig

from acd import load_model
from acd.graph import ComputeGraph


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
