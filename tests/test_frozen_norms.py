"""``frozen_norms`` (GIM's frozen-norm backward rule) against independent expectations.

(a) On a tiny GPT-2 built so that one head matters only through the norms' statistics, its
    frozen-norm EAP scores are exactly 0 and its plain EAP scores are not.
(b) Frozen-norm EAP equals the derivative along each edge, by autograd, of a model whose norms
    are re-implemented by hand with detached statistics (GPT-2, Llama, NeoX, float64).
(c) The forward is unchanged: logits bit-identical with and without frozen norms.
Plus the option's plumbing: methods, circuit parameters, the command line, refusals.
"""

from __future__ import annotations

import shutil
import warnings
from typing import Any

import pytest
import torch
from hand_hooks import destination_point
from transformer_lens.model_bridge.generalized_components.normalization import (
    NormalizationBridge,
)

import acd
from acd.attribution import AttributionError, attribute
from acd.errors import AcdError
from acd.graph import ComputeGraph
from acd.methods import (
    EAP,
    EAPIG,
    CleanCorrupted,
    EAPIGActivations,
    Exact,
    Hybrid,
    method_from_name,
    method_from_params,
)
from acd.metrics import get_metric
from acd.patching import run_with_gradients
from acd.tasks import PromptPair, encode_pairs

# Clean/corrupted pairs in the tiny models' vocabulary (tests/conftest.py).
PAIRS = [
    PromptPair(
        "when Mary and John went to the store John gave a 3 to",
        "when Alice and Bob went to the store Tom gave a 3 to",
        (" Mary",),
        (" John",),
    ),
    PromptPair(
        "then Anna and Paul went to the park Paul said",
        "then Sara and Tom went to the park Bob said",
        (" Anna",),
        (" Paul",),
    ),
]


def tiny_batch(model):
    return encode_pairs(PAIRS, model.tokenizer, "logit_diff")


# --------------------------------------------------------------------------------------------
# Fixtures: float64 models of each architecture


@pytest.fixture(scope="module")
def gpt2(tiny_gpt2_dir):
    return acd.load_model(tiny_gpt2_dir, device="cpu", dtype="float64")


@pytest.fixture(scope="module")
def neox(make_tiny_model_dir):
    return acd.load_model(make_tiny_model_dir("neox"), device="cpu", dtype="float64")


def _rms_norm_in_float64(module: Any):
    """LlamaRMSNorm's forward without its cast to float32 (which it makes even in a float64
    model): [..., d] -> [..., d]."""

    def forward(hidden_states: torch.Tensor) -> torch.Tensor:
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        return module.weight * (hidden_states * torch.rsqrt(variance + module.variance_epsilon))

    return forward


@pytest.fixture(scope="module")
def llama(tiny_llama_dir):
    """The tiny Llama in float64, its RMSNorms computing in float64 too: Hugging Face's
    LlamaRMSNorm rounds to float32, which would put the hand-written float64 reference 1e-7
    away from the model. Both sides of the check run on this same model."""
    model = acd.load_model(tiny_llama_dir, device="cpu", dtype="float64")
    for module in model.bridge.original_model.modules():
        if type(module).__name__ == "LlamaRMSNorm":
            module.forward = _rms_norm_in_float64(module)
    return model


# --------------------------------------------------------------------------------------------
# Independent reference: norms re-implemented by hand with detached statistics


def reference_norm(raw: Any, rms: bool):
    """The norm ``raw`` (the Hugging Face module) as x -> (x - mu) * s * gamma + beta with the
    statistics mu and s = 1/sqrt(var + eps) detached: [..., d] -> [..., d]."""
    eps = getattr(raw, "eps", None) or raw.variance_epsilon
    bias = getattr(raw, "bias", None)

    def forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        mean = torch.zeros_like(x[..., :1]) if rms else x.mean(-1, keepdim=True)
        centered = x - mean.detach()
        scale = 1 / torch.sqrt(centered.pow(2).mean(-1, keepdim=True) + eps)
        out = centered * scale.detach() * raw.weight
        return out if bias is None else out + bias

    return forward


@pytest.fixture
def hand_frozen_norms(monkeypatch):
    """Function: swap every norm of a model for ``reference_norm`` until the test ends: the Hugging
    Face modules (called per head for q/k/v, and by Llama's and NeoX's bridge) and the bridge's
    own computation (GPT-2's bridge computes ln2 and ln_final itself)."""

    def swap(model) -> None:
        for module in model.bridge.modules():
            if isinstance(module, NormalizationBridge):
                raw = module.original_component
                norm = reference_norm(raw, module.uses_rms_norm)
                monkeypatch.setattr(raw, "forward", norm)
                monkeypatch.setattr(module, "_python_norm_forward", norm)

    return swap


def source_outputs(model, graph, tokens) -> dict[int, torch.Tensor]:
    """Every source's output in a plain forward, by hand: {source index: [b, pos, d_model]}."""
    record = {}

    def keep(index, head=None):
        def hook(x, hook):
            record[index] = (x if head is None else x[:, :, head]).detach().clone()

        return hook

    hooks = [(model.hook_embed_out(), keep(0))]
    for layer in range(graph.n_layers):
        for h in range(graph.n_heads):
            hooks.append((model.hook_head_result(layer), keep(graph.src_head(layer, h), h)))
        hooks.append((model.hook_mlp_out(layer), keep(graph.src_mlp(layer))))
    with torch.no_grad():
        model.bridge.run_with_hooks(tokens, fwd_hooks=hooks)
    return record


def derivative_along_edge(model, batch, point, diff) -> torch.Tensor:
    """d/dalpha of the mean metric with alpha * diff [b, pos, d_model] added where the
    destination reads (``point``: hook name, head index or None), at alpha = 0."""
    alpha = torch.zeros((), dtype=diff.dtype, requires_grad=True)
    name, index = point

    def add(x, hook):
        if index is None:
            return x + alpha * diff
        x = x.clone()
        x[:, :, index] = x[:, :, index] + alpha * diff
        return x

    with torch.enable_grad():
        logits = model.bridge.run_with_hooks(batch.clean, fwd_hooks=[(name, add)])
        value = get_metric(batch.metric)(logits, batch).mean()
        return torch.autograd.grad(value, alpha)[0]


def some_edges(graph, per_kind: int) -> list[tuple[int, int]]:
    """The first ``per_kind`` valid edges into each destination kind, from the last sources."""
    edges = []
    for kind in ("q", "k", "v", "mlp", "logits"):
        of_kind = [
            (u, v)
            for u, v in reversed(graph.valid.nonzero().tolist())
            if graph.destinations[v].kind == kind
        ]
        edges += of_kind[:: max(1, len(of_kind) // per_kind)][:per_kind]
    return edges


# --------------------------------------------------------------------------------------------
# (b) frozen-norm EAP is the derivative with hand-written frozen norms


@pytest.mark.parametrize("name", ["gpt2", "llama", "neox"])
def test_frozen_eap_equals_the_derivative_through_hand_frozen_norms(
    name, request, hand_frozen_norms
):
    model = request.getfixturevalue(name)
    graph = ComputeGraph.from_model(model)
    batch = tiny_batch(model)
    frozen = attribute(model, graph, batch, "eap", frozen_norms=True, progress=False)
    plain = attribute(model, graph, batch, "eap", progress=False)
    clean = source_outputs(model, graph, batch.clean)
    corrupt = source_outputs(model, graph, batch.corrupted)
    edges = some_edges(graph, per_kind=4)
    hand_frozen_norms(model)  # from here on the model's norms are the hand-written ones
    changed = 0.0
    for u, v in edges:
        point = destination_point(model, graph.destinations[v])
        expected = derivative_along_edge(model, batch, point, corrupt[u] - clean[u])
        torch.testing.assert_close(frozen[u, v], expected, rtol=1e-10, atol=1e-10)
        changed = max(changed, float((plain[u, v] - expected).abs() / expected.abs().clamp(1e-9)))
    assert changed > 1e-3  # the rule changes these scores: the check is not vacuous


# --------------------------------------------------------------------------------------------
# (a) an edge that matters only through the norms' statistics

D_HEAD = 8  # the tiny GPT-2: d_model 32, 4 heads
COORD = 5  # the residual coordinate head a0.h0 writes into


@pytest.fixture(scope="module")
def statistics_only_gpt2(tiny_gpt2_dir, tmp_path_factory):
    """The tiny GPT-2 with head a0.h0 writing only into residual coordinate COORD (its W_O rows
    zero elsewhere, COORD's scaled up), which nothing reads linearly: COORD's rows of every
    later W_Q/W_K/W_V and W_in, and its column of the (tied) unembedding, are zero. So the head
    reaches the logits only through the norms' means and variances."""
    from transformers import AutoModelForCausalLM

    directory = tmp_path_factory.mktemp("statistics-only") / "gpt2"
    shutil.copytree(tiny_gpt2_dir, directory)
    hf: Any = AutoModelForCausalLM.from_pretrained(directory)
    blocks = hf.transformer.h
    with torch.no_grad():
        c_proj = blocks[0].attn.c_proj.weight  # Conv1D [d_model in (heads), d_model out]
        writes = 5 * c_proj[:D_HEAD, COORD].clone()
        c_proj[:D_HEAD] = 0
        c_proj[:D_HEAD, COORD] = writes
        blocks[0].mlp.c_fc.weight[COORD] = 0  # [d_model, d_mlp]: layer 0's MLP reads a0.h0
        blocks[1].attn.c_attn.weight[COORD] = 0  # [d_model, 3 d_model]: q, k and v
        blocks[1].mlp.c_fc.weight[COORD] = 0
        hf.transformer.wte.weight[:, COORD] = 0  # tied with lm_head: the unembedding's column
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()
    hf.save_pretrained(directory)
    return acd.load_model(directory, device="cpu", dtype="float64")


@pytest.mark.parametrize("method", ["eap", "eap-ig", "eap-ig-activations", "clean-corrupted"])
def test_an_edge_through_the_statistics_only_scores_exactly_zero(statistics_only_gpt2, method):
    model = statistics_only_gpt2
    graph = ComputeGraph.from_model(model)
    batch = tiny_batch(model)
    head = graph.src_head(0, 0)
    out = graph.valid[head]  # every edge out of a0.h0: m0, layer 1's q/k/v/MLP, logits
    plain = attribute(model, graph, batch, method, progress=False)[head, out]
    frozen = attribute(model, graph, batch, method, frozen_norms=True, progress=False)[head, out]
    assert (frozen == 0).all(), frozen
    assert plain.abs().max() > 1e-4, plain
    # The construction is what it claims: the head's output lies on COORD only.
    diff = source_outputs(model, graph, batch.corrupted)[head]
    diff = diff - source_outputs(model, graph, batch.clean)[head]
    assert (diff[..., COORD] != 0).any() and (diff[..., :COORD] == 0).all()


# --------------------------------------------------------------------------------------------
# (c) the forward is unchanged


@pytest.mark.parametrize("kind", ["gpt2", "llama", "neox"])
def test_the_forward_is_bit_identical(kind, tiny_models):
    """float32 models (the tiny_models fixture); no bridge fallback warning either (an edited
    hook_scale would make Llama's and NeoX's bridge rebuild the output and warn)."""
    model, graph = tiny_models[kind]
    batch = tiny_batch(model)
    seen = {}

    def metric(tag):
        def fn(logits):
            seen[tag] = logits.detach().clone()
            return logits[:, -1, 1] - logits[:, -1, 2]

        return fn

    run_with_gradients(model, graph, batch.clean, metric("plain"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, _, grads = run_with_gradients(
            model, graph, batch.clean, metric("frozen"), frozen_norms=True
        )
    assert torch.equal(seen["frozen"], seen["plain"])
    assert torch.equal(seen["frozen"], model.logits(batch.clean))
    assert grads.abs().max() > 0


def test_eap_ig_takes_frozen_gradients_all_along_the_path(gpt2):
    """EAP-IG's m = 1 is frozen EAP; its other path points are frozen too; the method object
    scores as ``attribute`` does."""
    from acd.runner import PromptRunner

    graph = ComputeGraph.from_model(gpt2)
    batch = tiny_batch(gpt2)
    frozen_eap = attribute(gpt2, graph, batch, "eap", frozen_norms=True, progress=False)
    one_step = attribute(
        gpt2, graph, batch, "eap-ig", ig_steps=1, frozen_norms=True, progress=False
    )
    torch.testing.assert_close(one_step, frozen_eap, rtol=0, atol=0)
    plain = attribute(gpt2, graph, batch, "eap-ig", ig_steps=3, progress=False)
    frozen = attribute(gpt2, graph, batch, "eap-ig", ig_steps=3, frozen_norms=True, progress=False)
    assert (frozen - plain).abs().max() > 1e-4
    runner = PromptRunner(gpt2, graph, batch, method="eap-ig", ig_steps=3)
    by_method = EAPIG(3, frozen_norms=True).score(runner, progress=False)
    torch.testing.assert_close(by_method, frozen, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# Plumbing and refusals


def test_methods_record_frozen_norms_only_when_set():
    assert EAP().params() == {} and EAPIG(3).params() == {"ig_steps": 3}
    assert EAP(frozen_norms=True).params() == {"frozen_norms": True}
    assert EAPIG(3, frozen_norms=True).params() == {"ig_steps": 3, "frozen_norms": True}
    assert method_from_params("eap", {"frozen_norms": True}) == EAP(frozen_norms=True)
    rebuilt = method_from_params("eap-ig", {"ig_steps": 3, "frozen_norms": True})
    assert rebuilt == EAPIG(3, frozen_norms=True)
    hybrid = method_from_name("hybrid", tau=0.1, candidates=5, frozen_norms=True)
    assert isinstance(hybrid, Hybrid) and hybrid.scoring == EAPIG(frozen_norms=True)
    with pytest.raises(AcdError, match="frozen_norms must be True or False"):
        EAP(frozen_norms="yes")  # type: ignore[arg-type]
    assert method_from_name("exact", frozen_norms=True) == Exact()  # no gradient: no field
    for cls in (EAPIGActivations, CleanCorrupted):
        assert cls(frozen_norms=True).params()["frozen_norms"] is True
        assert method_from_params(cls.name, cls(frozen_norms=True).params()) == cls(
            frozen_norms=True
        )


def test_exact_and_a_model_without_norms_are_refused(gpt2):
    graph = ComputeGraph.from_model(gpt2)
    with pytest.raises(AttributionError, match="not 'exact'"):
        attribute(gpt2, graph, tiny_batch(gpt2), "exact", frozen_norms=True)
    compiled = acd.load_model("compiled/reverse", device="cpu")
    tokens = torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(AcdError, match="has no LayerNorm or RMSNorm") as caught:
        run_with_gradients(
            compiled,
            ComputeGraph.from_model(compiled),
            tokens,
            lambda logits: logits.sum(dim=(1, 2)),
            frozen_norms=True,
        )
    assert "\n" not in str(caught.value)


def _options(argv: list[str]) -> dict:
    from acd.cli.discover import _discover_options
    from acd.cli.parser import build_parser

    return _discover_options(build_parser().parse_args(["discover", "ioi", *argv]))


def test_the_command_line_option():
    assert _options(["--method", "eap", "--frozen-norms"])["method"] == EAP(frozen_norms=True)
    method = _options(["--ig-steps", "3", "--frozen-norms"])["method"]
    assert method == EAPIG(3, frozen_norms=True)
    assert _options(["--method", "eap"])["method"] == EAP()
    for argv in (["--method", "exact"], ["--method", "acdc", "--tau", "0.1"]):
        with pytest.raises(AcdError, match="--frozen-norms applies to the gradient methods"):
            _options([*argv, "--frozen-norms"])
