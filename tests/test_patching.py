"""Edge patching and gradients, each checked against an expectation computed independently:
plain forwards, TransformerLens' own activation cache, hand-written hooks, finite differences."""

from __future__ import annotations

import pytest
import torch
from hand_hooks import destination_point

from acd.graph import ComputeGraph
from acd.metrics import get_metric, kl_divergence
from acd.models import load_model
from acd.patching import (
    collect_sources,
    destination_hooks,
    mean_sources,
    patch_values,
    run_and_collect,
    run_and_collect_residuals,
    run_from_layer,
    run_patched,
    run_with_gradients,
    source_hooks,
)
from acd.tasks import PromptBatch, load_task

TINY_KINDS = ("gpt2", "llama", "neox")
TOL = 1e-5


# --------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def toy():
    model = load_model("toy", device="cpu")
    return model, ComputeGraph.from_model(model)


def random_tokens(seed: int, batch: int = 3, pos: int = 6) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, 50, (batch, pos), generator=generator)


def prompt_batch(clean: torch.Tensor) -> PromptBatch:
    """A batch of full-length prompts without answers (only clean ids and lengths matter for
    mean_sources)."""
    return PromptBatch.from_token_ids(clean, clean, correct=[[]] * len(clean), metric="logit_diff")


def plain_logits(model, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.bridge(tokens)


# --------------------------------------------------------------------------------------------
# Independent reference: TransformerLens' cache and hand-written hooks


def source_hook_name(model, graph: ComputeGraph, src: int) -> str:
    node = graph.sources[src]
    if node.kind == "input":
        return model.hook_embed_out()
    if node.kind == "head":
        return model.hook_head_result(node.layer)
    return model.hook_mlp_out(node.layer)


def cached_sources(model, graph: ComputeGraph, tokens: torch.Tensor) -> list[torch.Tensor]:
    """Every source's output [batch, pos, d_model], by index, from one ``run_with_cache``."""
    names = sorted({source_hook_name(model, graph, src) for src in range(graph.n_src)})
    with torch.no_grad():
        _, cache = model.bridge.run_with_cache(tokens, names_filter=names)
    out = []
    for src, node in enumerate(graph.sources):
        value = cache[source_hook_name(model, graph, src)]
        out.append(value[:, :, node.head] if node.kind == "head" else value)
    return out


def run_adding(model, graph, tokens, dst: int, delta: torch.Tensor) -> torch.Tensor:
    """Logits of a run where destination ``dst``'s input gets ``delta`` [batch, pos, d] added."""
    name, index = destination_point(model, graph.destinations[dst])

    def hook(x, hook):
        x = x.clone()
        if index is None:
            x += delta
        else:
            x[:, :, index] += delta
        return x

    with torch.no_grad():
        return model.bridge.run_with_hooks(tokens, fwd_hooks=[(name, hook)])


def one_edge_mask(graph: ComputeGraph, src: int, dst: int, value=True) -> torch.Tensor:
    mask = torch.zeros(graph.n_src, graph.n_dst)
    mask[src, dst] = float(value)
    return mask


# --------------------------------------------------------------------------------------------
# The hook map follows the graph


@pytest.mark.parametrize("kind", TINY_KINDS)
def test_hook_map_covers_the_graph_and_its_valid_edges(tiny_models, kind):
    model, graph = tiny_models[kind]
    sources = source_hooks(model, graph)
    assert [s.start for s in sources[1:]] == [s.stop for s in sources[:-1]]
    assert sources[0].start == 0 and sources[-1].stop == graph.n_src
    destinations = destination_hooks(model, graph)
    assert [d.start for d in destinations[1:]] == [d.stop for d in destinations[:-1]]
    assert destinations[0].start == 0 and destinations[-1].stop == graph.n_dst
    for slot in destinations:
        reads = torch.arange(graph.n_src) < slot.n_before
        for j in range(slot.start, slot.stop):
            assert torch.equal(graph.valid[:, j], reads), graph.destinations[j].name


@pytest.mark.parametrize("kind", TINY_KINDS)
def test_collected_sources_are_the_cached_activations(tiny_models, kind):
    model, graph = tiny_models[kind]
    tokens = random_tokens(1)
    logits, sources = run_and_collect(model, graph, tokens)
    assert torch.equal(logits, plain_logits(model, tokens))
    expected = cached_sources(model, graph, tokens)
    for src in range(graph.n_src):
        assert torch.equal(sources[:, :, src], expected[src]), graph.sources[src].name


# --------------------------------------------------------------------------------------------
# Nothing patched, everything patched


@pytest.mark.parametrize("kind", TINY_KINDS)
@pytest.mark.parametrize("dtype", [torch.bool, torch.float32])
def test_patching_nothing_is_the_plain_model(tiny_models, kind, dtype):
    model, graph = tiny_models[kind]
    tokens = random_tokens(2)
    patch = torch.randn(tokens.shape[0], tokens.shape[1], graph.n_src, model.spec.d_model)
    mask = torch.zeros(graph.n_src, graph.n_dst, dtype=dtype)
    logits = run_patched(model, graph, tokens, mask, patch)
    assert (logits - plain_logits(model, tokens)).abs().max() <= TOL


@pytest.mark.parametrize("kind", TINY_KINDS)
def test_patching_every_edge_reproduces_the_corrupted_run(tiny_models, kind):
    model, graph = tiny_models[kind]
    clean, corrupted = random_tokens(3), random_tokens(4)
    corrupted_logits, corrupted_sources = run_and_collect(model, graph, corrupted)
    # Invalid entries set too: they must be ignored.
    everything = torch.ones(graph.n_src, graph.n_dst, dtype=torch.bool)
    logits, sources = run_patched(
        model, graph, clean, everything, corrupted_sources, return_sources=True
    )
    assert (logits - corrupted_logits).abs().max() <= TOL
    # Every node computed the corrupted output; the input node itself stays clean (only its
    # outgoing edges carry the corrupted embeddings).
    assert (sources[:, :, 1:] - corrupted_sources[:, :, 1:]).abs().max() <= TOL
    assert torch.equal(sources[:, :, 0], collect_sources(model, graph, clean)[:, :, 0])


TASKS = ("ioi", "greater-than", "induction")


@pytest.mark.parametrize("task", TASKS)
def test_toy_tasks_nothing_patched_and_everything_patched(toy, task):
    model, graph = toy
    batch = load_task(task).make_batch(model.tokenizer, 4, seed=0)
    metric = get_metric(batch.metric)
    clean_logits = plain_logits(model, batch.clean)
    corrupted_logits = plain_logits(model, batch.corrupted)
    nothing = torch.zeros(graph.n_src, graph.n_dst, dtype=torch.bool)
    for ablation in ("corrupted", "zero", "mean"):
        patch = patch_values(model, graph, batch, ablation)
        logits = run_patched(model, graph, batch.clean, nothing, patch)
        assert (logits - clean_logits).abs().max() <= TOL
        assert (metric(logits, batch) - metric(clean_logits, batch)).abs().max() <= TOL
        assert kl_divergence(logits, clean_logits, batch).abs().max() <= TOL
    patch = patch_values(model, graph, batch, "corrupted")
    logits = run_patched(model, graph, batch.clean, graph.valid, patch)
    assert (logits - corrupted_logits).abs().max() <= TOL
    assert (metric(logits, batch) - metric(corrupted_logits, batch)).abs().max() <= TOL


# --------------------------------------------------------------------------------------------
# Single edges against hand-written hooks


def random_valid_edges(graph: ComputeGraph, n: int, seed: int) -> list[tuple[int, int]]:
    """n random valid edges, plus one into each kind of destination port (q, k, v, mlp,
    logits) and one out of the input node."""
    generator = torch.Generator().manual_seed(seed)
    edges = graph.valid.nonzero().tolist()
    picks = [edges[i] for i in torch.randperm(len(edges), generator=generator)[:n].tolist()]
    last = graph.n_layers - 1
    for dst in (
        graph.dst_q(last, 1),
        graph.dst_k(last, graph.n_kv_heads - 1),
        graph.dst_v(last, 0),
        graph.dst_mlp(last),
        graph.dst_logits(),
    ):
        picks.append((int(graph.valid[:, dst].nonzero()[-1]), dst))
    picks.append((0, graph.dst_q(0, 0)))
    return picks


@pytest.mark.parametrize("kind", TINY_KINDS)
def test_one_patched_edge_matches_a_hand_written_hook(tiny_models, kind):
    model, graph = tiny_models[kind]
    clean, corrupted = random_tokens(5), random_tokens(6)
    patch = collect_sources(model, graph, corrupted)
    clean_z = cached_sources(model, graph, clean)
    corrupted_z = cached_sources(model, graph, corrupted)
    for k, (src, dst) in enumerate(random_valid_edges(graph, 3, seed=7)):
        alpha = 1.0 if k % 2 else 0.3  # bool-like and interpolating masks
        diff = corrupted_z[src] - clean_z[src]
        expected = run_adding(model, graph, clean, dst, alpha * diff)
        logits = run_patched(model, graph, clean, one_edge_mask(graph, src, dst, alpha), patch)
        name = f"{graph.sources[src].name} -> {graph.destinations[dst].name}"
        assert (logits - expected).abs().max() <= TOL, name


@pytest.mark.parametrize("kind", TINY_KINDS)
def test_zero_ablating_all_but_one_edge_into_a_port(tiny_models, kind):
    """With every edge into v but u -> v zero-ablated, v reads z_u + the b_O of the layers
    before it: set that by hand. (Keeping one source keeps the norm well conditioned: an input
    of ~0 under RMSNorm would amplify rounding noise.)"""
    model, graph = tiny_models[kind]
    tokens = random_tokens(8)
    zeros = torch.zeros(*tokens.shape, graph.n_src, model.spec.d_model)
    layer = graph.n_layers - 1
    for dst in (graph.dst_q(layer, 2), graph.dst_k(layer, 0), graph.dst_logits()):
        kept = int(graph.valid[:, dst].nonzero()[-1])
        name, index = destination_point(model, graph.destinations[dst])
        port_layer = graph.destinations[dst].layer
        before = range(graph.n_layers if port_layer is None else port_layer)
        value = cached_sources(model, graph, tokens)[kept] + sum(
            model.attn_output_bias(lay) for lay in before
        )

        def hook(x, hook, index=index, value=value):
            x = x.clone()
            if index is None:
                x[:] = value
            else:
                x[:, :, index] = value
            return x

        with torch.no_grad():
            expected = model.bridge.run_with_hooks(tokens, fwd_hooks=[(name, hook)])
        mask = graph.valid & (torch.arange(graph.n_dst) == dst)
        mask[kept] = False
        logits = run_patched(model, graph, tokens, mask, zeros)
        assert (logits - expected).abs().max() <= TOL, graph.destinations[dst].name


@pytest.mark.parametrize("kind", TINY_KINDS)
def test_a_mask_per_batch_row_equals_separate_runs(tiny_models, kind):
    model, graph = tiny_models[kind]
    clean, corrupted = random_tokens(9, batch=3), random_tokens(10, batch=3)
    patch = collect_sources(model, graph, corrupted)
    generator = torch.Generator().manual_seed(11)
    masks = torch.rand(3, graph.n_src, graph.n_dst, generator=generator)
    masks[0] = masks[0] < 0.3  # a bool-valued row among interpolating ones
    logits = run_patched(model, graph, clean, masks, patch)
    for row in range(3):
        alone = run_patched(model, graph, clean[row : row + 1], masks[row], patch[row : row + 1])
        assert (logits[row : row + 1] - alone).abs().max() <= TOL


@pytest.mark.parametrize("kind", TINY_KINDS)
@pytest.mark.parametrize("density", [0.02, 0.5, 0.98])
def test_sparse_and_complement_corrections_equal_the_dense_one(tiny_models, kind, density):
    """A plain mask reads only the patched (or only the kept) sources of each destination; a
    mask that needs gradients takes the dense product over every source. Both must agree."""
    model, graph = tiny_models[kind]
    clean, corrupted = random_tokens(21), random_tokens(22)
    patch = collect_sources(model, graph, corrupted)
    generator = torch.Generator().manual_seed(23)
    mask = (torch.rand(graph.n_src, graph.n_dst, generator=generator) < density).float()
    sparse = run_patched(model, graph, clean, mask, patch)
    dense = run_patched(model, graph, clean, mask.clone().requires_grad_(), patch).detach()
    assert (sparse - dense).abs().max() <= TOL


def test_patch_sources_broadcast_over_the_batch(tiny_models):
    model, graph = tiny_models["gpt2"]
    tokens = random_tokens(12)
    one = torch.randn(1, tokens.shape[1], graph.n_src, model.spec.d_model)
    mask = graph.valid & (torch.rand(graph.n_src, graph.n_dst) < 0.5)
    expected = run_patched(model, graph, tokens, mask, one.expand(3, -1, -1, -1).clone())
    assert (run_patched(model, graph, tokens, mask, one) - expected).abs().max() <= TOL


def test_bad_shapes_are_refused(tiny_models):
    model, graph = tiny_models["gpt2"]
    tokens = random_tokens(13)
    patch = torch.zeros(*tokens.shape, graph.n_src, model.spec.d_model)
    with pytest.raises(ValueError, match="patch mask has shape"):
        run_patched(model, graph, tokens, torch.zeros(graph.n_src, graph.n_dst + 1), patch)
    with pytest.raises(ValueError, match="patch sources have shape"):
        run_patched(model, graph, tokens, graph.valid, patch[:, :, :-1])
    with pytest.raises(ValueError, match="unknown ablation"):
        patch_values(model, graph, None, "resample")


# --------------------------------------------------------------------------------------------
# What patched edges carry


def test_patch_values(toy):
    model, graph = toy
    batch = load_task("induction").make_batch(model.tokenizer, 3, seed=1)
    batch.lengths[1] -= 2  # pretend prompt 1 is shorter: its last two positions are padding
    corrupted = patch_values(model, graph, batch, "corrupted")
    assert torch.equal(corrupted, collect_sources(model, graph, batch.corrupted))
    assert not patch_values(model, graph, batch, "zero").any()
    clean = collect_sources(model, graph, batch.clean)
    expected = torch.zeros_like(clean[0])
    for t in range(batch.clean.shape[1]):
        real = [i for i in range(len(batch)) if t < batch.lengths[i]]
        expected[t] = clean[real, t].mean(dim=0)
    means = patch_values(model, graph, batch, "mean")
    assert means.shape == clean.shape
    assert (means - expected).abs().max() <= TOL
    chunked = mean_sources(model, graph, batch, batch_size=2)
    assert (chunked - expected).abs().max() <= TOL


# --------------------------------------------------------------------------------------------
# Gradients


@pytest.fixture(scope="module")
def tiny64(make_tiny_model_dir):
    models = {}
    for kind in ("gpt2", "llama"):
        model = load_model(make_tiny_model_dir(kind), device="cpu", dtype=torch.float64)
        models[kind] = (model, ComputeGraph.from_model(model))
    return models


def answer_metric(logits: torch.Tensor) -> torch.Tensor:
    """A nonlinear per-prompt metric: log-softmax of token 3 minus token 7 at the last position."""
    logp = torch.log_softmax(logits[:, -1], dim=-1)
    return logp[:, 3] - logp[:, 7] + logits[:, 2, 5] ** 2


# (eps, rtol, atol) of the finite-difference check. The float64 GPT-2 computes in float64
# throughout; Llama's RMSNorm and rotary embeddings compute in float32 even in a float64 model,
# so its differences need a larger step and a looser tolerance.
FINITE_DIFFERENCE = {"gpt2": (1e-6, 1e-6, 1e-8), "llama": (1e-3, 3e-3, 1e-3)}


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_gradients_match_finite_differences(tiny64, kind):
    model, graph = tiny64[kind]
    eps, rtol, atol = FINITE_DIFFERENCE[kind]
    tokens = random_tokens(14)
    metric, sources, grads = run_with_gradients(model, graph, tokens, answer_metric)
    logits = plain_logits(model, tokens)
    assert torch.allclose(metric, answer_metric(logits), atol=1e-10)
    assert torch.equal(sources, collect_sources(model, graph, tokens))
    assert grads.shape == (*tokens.shape, graph.n_dst, model.spec.d_model)
    generator = torch.Generator().manual_seed(15)
    last = graph.n_layers - 1
    for dst in (
        graph.dst_q(0, 1),
        graph.dst_k(last, graph.n_kv_heads - 1),
        graph.dst_v(0, 0),
        graph.dst_mlp(0),
        graph.dst_logits(),
    ):
        direction = torch.randn(*tokens.shape, model.spec.d_model, generator=generator).double()
        plus = answer_metric(run_adding(model, graph, tokens, dst, eps * direction)).sum()
        minus = answer_metric(run_adding(model, graph, tokens, dst, -eps * direction)).sum()
        numeric = (plus - minus) / (2 * eps)
        analytic = (grads[:, :, dst] * direction).sum()
        assert torch.isclose(analytic, numeric, rtol=rtol, atol=atol), graph.destinations[dst]


def test_gradients_are_per_head(tiny64):
    """Query heads of one layer get different gradients (no sharing through the copies)."""
    model, graph = tiny64["gpt2"]
    _, _, grads = run_with_gradients(model, graph, random_tokens(16), answer_metric)
    q = grads[:, :, graph.dst_q(1, 0) : graph.dst_q(1, 0) + graph.n_heads]
    assert not torch.allclose(q[:, :, 0], q[:, :, 1])


def test_embed_override_replaces_the_input_node(tiny64):
    model, graph = tiny64["gpt2"]
    clean, corrupted = random_tokens(17), random_tokens(18)
    corrupted_embed = cached_sources(model, graph, corrupted)[0]
    metric, sources, _ = run_with_gradients(
        model, graph, clean, answer_metric, embed_override=corrupted_embed
    )
    # The input node is the whole residual entering block 0: replacing it is the corrupted run.
    assert torch.allclose(metric, answer_metric(plain_logits(model, corrupted)), atol=1e-10)
    assert torch.equal(sources[:, :, 0], corrupted_embed)


def test_a_float_mask_can_be_learned(tiny64):
    """With a mask that requires grad the run is differentiable in it (finite differences)."""
    model, graph = tiny64["gpt2"]
    clean, corrupted = random_tokens(19), random_tokens(20)
    patch = collect_sources(model, graph, corrupted)
    base = 0.5 * graph.valid.double()
    mask = base.clone().requires_grad_()
    logits = run_patched(model, graph, clean, mask, patch)
    assert torch.allclose(logits, run_patched(model, graph, clean, base, patch), atol=1e-10)
    answer_metric(logits).sum().backward()
    eps = 1e-6
    for src, dst in ((0, graph.dst_q(1, 0)), (graph.src_head(0, 1), graph.dst_logits())):
        bump = one_edge_mask(graph, src, dst, eps).double()
        plus = answer_metric(run_patched(model, graph, clean, base + bump, patch)).sum()
        minus = answer_metric(run_patched(model, graph, clean, base - bump, patch)).sum()
        numeric = (plus - minus) / (2 * eps)
        assert torch.isclose(mask.grad[src, dst], numeric, rtol=1e-6, atol=1e-8)


def test_mean_ablating_every_edge_forgets_the_prompt(tiny_models):
    """Every destination then reads per-position means plus constants: no prompt information
    is left, so every prompt gets the same logits."""
    model, graph = tiny_models["gpt2"]
    tokens = random_tokens(21, batch=4)
    patch = mean_sources(model, graph, prompt_batch(tokens)).expand(*tokens.shape, -1, -1)
    logits = run_patched(model, graph, tokens, graph.valid, patch)
    assert (logits - logits[:1]).abs().max() <= TOL
    assert (logits - plain_logits(model, tokens)).abs().max() > 0.1


# --------------------------------------------------------------------------------------------
# Runs from a cached residual (exact scores)


@pytest.mark.parametrize("kind", TINY_KINDS)
def test_run_from_layer_equals_run_patched(tiny_models, kind):
    """One edge, or every edge out of one node, patched in a run restarted at the destination's
    block from the cached clean residual = the same patch in a full run."""
    model, graph = tiny_models[kind]
    clean, corrupted = random_tokens(22), random_tokens(23)
    plain = plain_logits(model, clean)
    logits, sources, residuals = run_and_collect_residuals(model, graph, clean)
    assert torch.equal(logits, plain) and torch.equal(sources, collect_sources(model, graph, clean))
    patch = collect_sources(model, graph, corrupted)
    positions = torch.tensor([2, clean.shape[1] - 1])
    last = graph.n_layers - 1
    cases = [  # (source, destination or None for every destination of the source, block)
        (0, graph.dst_k(0, 0), 0),
        (graph.src_head(0, 3), graph.dst_q(last, 1), last),
        (graph.src_mlp(0), graph.dst_logits(), graph.n_layers),
        # a0.h1's first reader is m0 in a sequential block, layer 1's heads in a parallel one
        (graph.src_head(0, 1), None, 1 if graph.shape.parallel_attn_mlp else 0),
    ]
    for src, dst, layer in cases:
        mask = torch.zeros(graph.n_src, graph.n_dst, dtype=torch.bool)
        if dst is None:
            mask[src] = graph.valid[src]
        else:
            mask[src, dst] = True
        expected = run_patched(model, graph, clean, mask, patch)[:, positions]
        delta = patch[:, :, src] - sources[:, :, src]
        dst_mask = mask[src].expand(clean.shape[0], -1)
        got = run_from_layer(
            model, graph, residuals[:, :, layer], layer, delta, dst_mask, positions=positions
        )
        assert (got - expected).abs().max() <= TOL, (graph.sources[src].name, dst, layer)
    # The model is whole again afterwards.
    assert torch.equal(plain_logits(model, clean), plain)
