"""ACDC: the restarted patched runs against full ``run_patched`` forwards, and the batched,
speculative search against a plain one-edge-at-a-time implementation written here."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from random_batches import random_batch

import acd
from acd.acdc import AcdcError, acdc
from acd.discover import RunConfig
from acd.graph import ComputeGraph
from acd.methods import ACDC, EAP, Hybrid, method_from_name
from acd.metrics import get_metric
from acd.models import weights_sha256
from acd.patching import (
    collect_sources,
    patch_values,
    run_and_collect,
    run_and_collect_residuals,
    run_patched,
    run_patched_from_layer,
)
from acd.search import prune_dangling

TINY_KINDS = ("gpt2", "llama", "neox")


# --------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def toy():
    model = acd.load_model("toy", device="cpu")
    graph = ComputeGraph.from_model(model)
    batch = acd.load_task("ioi").make_batch(model.tokenizer, 8, 0)
    return model, graph, batch


# --------------------------------------------------------------------------------------------
# The independent reference: ACDC one edge at a time, every evaluation a full run_patched


def sequential_acdc(model, graph, batch, tau, metric="kl", ablation="corrupted", candidates=None):
    """Conmy et al.'s loop, written plainly: returns kept, deltas and tested, each
    [n_src, n_dst] (tested: the edges whose removal was tried)."""
    patch = patch_values(model, graph, batch, ablation)
    clean_logits = run_and_collect(model, graph, batch.clean)[0]
    metric_fn = get_metric(batch.metric if metric == "task" else metric, clean_logits)

    def mean_metric(kept: torch.Tensor) -> float:
        logits = run_patched(model, graph, batch.clean, graph.valid & ~kept, patch)
        return float(metric_fn(logits, batch).double().mean())

    kept = graph.valid.clone() if candidates is None else graph.valid & candidates
    deltas = torch.zeros(graph.n_src, graph.n_dst)
    tested = kept.clone()
    current = mean_metric(kept)
    for v in reversed(range(graph.n_dst)):
        for u in reversed(kept[:, v].nonzero().flatten().tolist()):
            kept[u, v] = False
            without = mean_metric(kept)
            deltas[u, v] = without - current
            removable = (
                (without - current < tau) if metric == "kl" else abs(without - current) < tau
            )
            if removable:
                current = without
            else:
                kept[u, v] = True
    return kept, deltas, tested


def assert_same_search(result, reference, tau, kl=True):
    kept, deltas, tested = reference
    assert torch.equal(result.mask, kept)
    torch.testing.assert_close(result.deltas.float(), deltas, rtol=0, atol=1e-5)
    assert result.visited == int(tested.sum())
    removed = tested & ~kept
    measure = result.deltas if kl else result.deltas.abs()
    assert bool((measure[removed] < tau).all())
    assert bool((measure[tested & kept] >= tau).all())


# --------------------------------------------------------------------------------------------
# run_patched_from_layer


@pytest.mark.parametrize("kind", TINY_KINDS)
def test_run_patched_from_layer_matches_a_full_patched_run(tiny_models, kind):
    model, graph = tiny_models[kind]
    generator = torch.Generator().manual_seed(1)
    clean = torch.randint(1, 60, (3, 7), generator=generator)
    patch = collect_sources(model, graph, torch.randint(1, 60, (3, 7), generator=generator))
    layers = torch.tensor(
        [p.layer if p.layer is not None else graph.n_layers for p in graph.destinations]
    )
    for layer in range(graph.n_layers + 1):
        late = layers >= layer
        # Earlier destinations: one mask shared by the reference run; later ones: per row.
        early_mask = (torch.rand(graph.n_src, graph.n_dst, generator=generator) < 0.4) & ~late
        rows = (torch.rand(3, graph.n_src, graph.n_dst, generator=generator) < 0.5) & late
        # The reference run's patches of later destinations (here random) must not matter:
        # the rows' masks replace them (as ACDC started from candidates needs).
        reference_mask = (
            early_mask | (torch.rand(graph.n_src, graph.n_dst, generator=generator) < 0.5) & late
        )
        _, sources, residuals = run_and_collect_residuals(
            model, graph, clean, patch_mask=reference_mask & graph.valid, patch_sources=patch
        )
        expected = run_patched(model, graph, clean, rows | early_mask, patch)
        got = run_patched_from_layer(
            model, graph, residuals[:, :, layer], layer, rows, patch, sources
        )
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
        # The patches matter: the rows differ from the reference run without them.
        unpatched = run_patched(model, graph, clean, early_mask, patch)
        assert float((expected - unpatched).abs().max()) > 1e-3
        positions = torch.tensor([2, 6])
        at = run_patched_from_layer(
            model, graph, residuals[:, :, layer], layer, rows, patch, sources, positions=positions
        )
        torch.testing.assert_close(at, expected[:, positions], rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------------
# The search equals the sequential algorithm


@pytest.mark.parametrize(
    ("metric", "tau", "rows_per_forward"),
    [("kl", 0.001, 64), ("kl", 0.001, 10), ("kl", 0.003, 4), ("logit_diff", 0.03, 9)],
)
def test_acdc_equals_the_sequential_algorithm_on_a_tiny_model(
    tiny_models, metric, tau, rows_per_forward
):
    # rows_per_forward 4 over 4 prompts: one circuit per forward (the current circuit measured
    # on its own); 9 and 10: windows of two circuits, often cut short by a kept edge.
    model, graph = tiny_models["gpt2"]
    batch = random_batch(4, 7, seed=0, d_vocab=60)
    reference = sequential_acdc(model, graph, batch, tau, metric)
    assert 5 <= int(reference[0].sum()) <= graph.n_edges - 20  # a non-trivial circuit
    result = acdc(
        model,
        graph,
        batch,
        tau=tau,
        metric=metric,
        rows_per_forward=rows_per_forward,
        progress=False,
    )
    assert_same_search(result, reference, tau, kl=metric == "kl")


@pytest.mark.parametrize("ablation", ["zero", "mean"])
def test_acdc_with_other_ablations_and_prompt_chunks(tiny_models, ablation):
    model, graph = tiny_models["llama"]
    batch = random_batch(5, 7, seed=2, d_vocab=60)
    reference = sequential_acdc(model, graph, batch, 0.002, "kl", ablation)
    result = acdc(model, graph, batch, tau=0.002, ablation=ablation, batch_size=2, progress=False)
    assert_same_search(result, reference, 0.002)


def test_hybrid_start_from_candidates_equals_the_sequential_algorithm(tiny_models):
    model, graph = tiny_models["neox"]
    batch = random_batch(4, 7, seed=3, d_vocab=60)
    generator = torch.Generator().manual_seed(0)
    candidates = (torch.rand(graph.n_src, graph.n_dst, generator=generator) < 0.6) & graph.valid
    reference = sequential_acdc(model, graph, batch, 0.001, candidates=candidates)
    assert int(reference[0].sum()) >= 5
    result = acdc(model, graph, batch, tau=0.001, candidates=candidates, progress=False)
    assert_same_search(result, reference, 0.001)
    assert not bool((result.mask & ~candidates).any())
    assert result.visited == int(candidates.sum())


@pytest.mark.slow
def test_acdc_equals_the_sequential_algorithm_on_the_toy_model(toy):
    model, graph, batch = toy
    tau = 0.03
    reference = sequential_acdc(model, graph, batch, tau, "task")
    # A real search: neither (nearly) empty nor (nearly) the whole graph of 479 edges (the
    # shipped toy keeps 103 here).
    assert 10 <= int(reference[0].sum()) <= graph.n_edges // 3
    result = acdc(model, graph, batch, tau=tau, metric="task", progress=False)
    assert_same_search(result, reference, tau, kl=False)
    # Speculation: far fewer forwards than edges tested (479 with one edge per forward).
    assert result.visited == graph.n_edges
    assert result.n_forwards < graph.n_edges / 2


# --------------------------------------------------------------------------------------------
# Progress and checkpoints


class Interrupt(KeyboardInterrupt):
    """A Ctrl-C raised from the progress callback."""


def _interrupted_checkpoint(model, graph, batch, path, **kwargs) -> dict:
    """Run ACDC with the checkpoint ``path``, stopped after its first destination; returns
    the checkpoint's JSON."""

    def stop(*_):
        raise Interrupt

    with pytest.raises(Interrupt):
        acdc(model, graph, batch, checkpoint=path, on_progress=stop, progress=False, **kwargs)
    return json.loads(path.read_text())


def _final_checkpoint(model, graph, batch, path, **kwargs) -> str:
    """The checkpoint ACDC writes after its last destination (read before it is removed)."""
    texts = []

    def read(*_):
        texts.append(path.read_text())

    acdc(model, graph, batch, checkpoint=path, on_progress=read, **kwargs)
    return texts[-1]


def test_checkpoint_resume_gives_the_uninterrupted_result(tiny_models, tmp_path):
    model, graph = tiny_models["gpt2"]
    batch = random_batch(4, 7, seed=0, d_vocab=60)
    kwargs = {"tau": 0.001, "rows_per_forward": 10, "progress": False}
    calls = []
    whole = acdc(model, graph, batch, on_progress=lambda *a: calls.append(a), **kwargs)
    assert len(calls) == graph.n_dst  # once per destination
    assert calls[-1] == (graph.n_edges, graph.n_edges, int(whole.mask.sum()))

    path = tmp_path / "acdc.json"
    finished = []

    def interrupt_at_the_eleventh(visited, total, kept):
        finished.append(visited)
        if len(finished) == 11:
            raise Interrupt

    with pytest.raises(Interrupt):
        acdc(model, graph, batch, checkpoint=path, on_progress=interrupt_at_the_eleventh, **kwargs)
    saved = json.loads(path.read_text())
    # The checkpoint is written before the callback: 11 destinations are done.
    assert saved["next_destination"] == graph.n_dst - 12
    assert saved["visited"] == finished[-1] and 0 < finished[-1] < graph.n_edges
    assert not list(tmp_path.glob(".*.tmp"))
    resumed = acdc(model, graph, batch, checkpoint=path, **kwargs)
    assert torch.equal(resumed.mask, whole.mask)
    assert torch.equal(resumed.deltas, whole.deltas)
    assert resumed.visited == whole.visited
    assert resumed.n_forwards < whole.n_forwards  # the first destinations were not redone
    assert not path.exists()  # the finished search removed its checkpoint

    # A checkpoint of a finished search (written after the last destination, the search then
    # interrupted before it could remove it) resumes to the same result, testing nothing.
    final = _final_checkpoint(model, graph, batch, path, **kwargs)
    assert json.loads(final)["next_destination"] == -1 and not path.exists()
    path.write_text(final)
    again = acdc(model, graph, batch, checkpoint=path, **kwargs)
    assert torch.equal(again.mask, whole.mask) and torch.equal(again.deltas, whole.deltas)
    assert again.n_circuits == 0


def test_checkpoint_of_another_run_is_refused(tiny_models, tmp_path):
    model, graph = tiny_models["gpt2"]
    batch = random_batch(4, 7, seed=0, d_vocab=60)
    path = tmp_path / "acdc.json"
    _interrupted_checkpoint(model, graph, batch, path, tau=0.01)
    with pytest.raises(AcdcError, match="tau"):
        acdc(model, graph, batch, tau=0.02, checkpoint=path, progress=False)
    with pytest.raises(AcdcError, match="prompts_sha256"):
        acdc(
            model,
            graph,
            random_batch(4, 7, seed=1, d_vocab=60),
            tau=0.01,
            checkpoint=path,
            progress=False,
        )
    with pytest.raises(AcdcError, match="candidates"):
        acdc(model, graph, batch, tau=0.01, candidates=graph.valid, checkpoint=path, progress=False)
    path.write_text("{not json")
    with pytest.raises(AcdcError, match="cannot read"):
        acdc(model, graph, batch, tau=0.01, checkpoint=path, progress=False)


def _perturbed_copy(model, tmp_path):
    """The model loaded from a copy of its directory in which one weight was changed."""
    from safetensors.torch import load_file, save_file

    copy = shutil.copytree(model.weights_dir, tmp_path / "perturbed")
    weights = load_file(copy / "model.safetensors")
    name = next(k for k in sorted(weights) if k.endswith("h.0.mlp.c_fc.weight"))
    weights[name] = weights[name].clone()
    weights[name][0, 0] += 0.5
    save_file(weights, copy / "model.safetensors", metadata={"format": "pt"})
    return acd.load_model(copy, device="cpu")


def test_checkpoint_of_a_model_with_other_weights_is_refused(tiny_models, tmp_path):
    """The same graph, prompts and parameters on a copy of the model with one weight changed:
    the checkpoint's deltas are not this model's, so resuming from it is refused."""
    model, graph = tiny_models["gpt2"]
    batch = random_batch(4, 7, seed=0, d_vocab=60)
    path = tmp_path / "acdc.json"
    _interrupted_checkpoint(model, graph, batch, path, tau=0.001)
    other = _perturbed_copy(model, tmp_path)
    assert weights_sha256(other) != weights_sha256(model)
    with pytest.raises(AcdcError, match="model_sha256 .the model's weights.") as error:
        acdc(other, graph, batch, tau=0.001, checkpoint=path, progress=False)
    message = str(error.value)
    assert "\n" not in message and "delete it or pass another checkpoint path" in message
    assert str(path) in message
    assert path.exists()  # a refused checkpoint is left alone


def test_checkpoint_of_another_dtype_is_refused(tiny_models, tmp_path):
    model, graph = tiny_models["gpt2"]
    batch = random_batch(4, 7, seed=0, d_vocab=60)
    path = tmp_path / "acdc.json"
    saved = _interrupted_checkpoint(model, graph, batch, path, tau=0.001)
    assert saved["dtype"] == "float32" and saved["device"] == "cpu"
    wider = acd.load_model(model.weights_dir, device="cpu", dtype=torch.float64)
    with pytest.raises(AcdcError, match="dtype: .float32. there, .float64. here"):
        acdc(wider, graph, batch, tau=0.001, checkpoint=path, progress=False)


@pytest.mark.parametrize(
    ("field", "value"),
    [("device", "cuda"), ("acd_version", "0.0.1"), ("ablation", "zero"), ("metric", "task")],
)
def test_checkpoint_fields_are_each_checked(tiny_models, tmp_path, field, value):
    model, graph = tiny_models["gpt2"]
    batch = random_batch(4, 7, seed=0, d_vocab=60)
    path = tmp_path / "acdc.json"
    saved = _interrupted_checkpoint(model, graph, batch, path, tau=0.001)
    assert field in saved
    path.write_text(json.dumps({**saved, field: value}))
    with pytest.raises(AcdcError, match=f"{field}: .{value}. there"):
        acdc(model, graph, batch, tau=0.001, checkpoint=path, progress=False)


def test_a_checkpoint_of_an_older_acd_is_refused_in_one_line(tiny_models, tmp_path):
    """A checkpoint without the weights, dtype and device fields cannot be verified."""
    model, graph = tiny_models["gpt2"]
    batch = random_batch(4, 7, seed=0, d_vocab=60)
    path = tmp_path / "acdc.json"
    saved = _interrupted_checkpoint(model, graph, batch, path, tau=0.001)
    # What a version-1 checkpoint held.
    old_keys = ("format", "graph", "tau", "metric", "ablation", "n_prompts", "prompts_sha256")
    old_keys += ("candidates_sha256", "kept", "deltas", "next_destination", "visited")
    for old in (
        {**{k: saved[k] for k in old_keys if k in saved}, "version": 1},
        {k: v for k, v in saved.items() if k != "model_sha256"},
    ):
        path.write_text(json.dumps(old))
        with pytest.raises(AcdcError, match="cannot be verified") as error:
            acdc(model, graph, batch, tau=0.001, checkpoint=path, progress=False)
        assert "\n" not in str(error.value) and "delete it" in str(error.value)


def test_resuming_says_so_and_a_finished_search_removes_its_checkpoint(
    tiny_models, tmp_path, capsys
):
    model, graph = tiny_models["gpt2"]
    batch = random_batch(4, 7, seed=0, d_vocab=60)
    path = tmp_path / "acdc.json"
    acdc(model, graph, batch, tau=0.001, checkpoint=path, progress=False)
    assert not path.exists()  # finished: nothing left to resume
    assert "resuming" not in capsys.readouterr().err

    saved = _interrupted_checkpoint(model, graph, batch, path, tau=0.001)
    capsys.readouterr()
    acdc(model, graph, batch, tau=0.001, checkpoint=path, progress=False)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "resuming" in line]
    assert lines == [
        f"resuming ACDC from {path}: 1 of {graph.n_dst} destinations done "
        f"({saved['visited']} edges tested)"
    ]
    assert not path.exists()


# --------------------------------------------------------------------------------------------
# Errors and discover


def test_acdc_refuses_a_missing_or_negative_tau(tiny_models):
    model, graph = tiny_models["gpt2"]
    batch = random_batch(4, 7, seed=0, d_vocab=60)
    for tau in (None, -0.1, float("nan")):
        with pytest.raises(AcdcError, match="tau"):
            acdc(model, graph, batch, tau=tau, progress=False)
    with pytest.raises(AcdcError, match="candidates have shape"):
        acdc(model, graph, batch, tau=0.1, candidates=torch.ones(3, 3, dtype=torch.bool))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (lambda: "acdc", "needs tau"),
        (lambda: ACDC(tau=-1.0), "tau must be >= 0"),
        (lambda: Hybrid(tau=0.1), "needs candidates"),
        (lambda: Hybrid(tau=0.1, candidates=0), "between 1 and"),
        (lambda: method_from_name("hybrid", tau=0.1, candidates=10, scoring="exact"), "scoring"),
        (lambda: Hybrid(tau=0.1, candidates=10, scoring=EAP()), "all-zero"),
        (lambda: Hybrid(tau=0.1, candidates=10_000), "between 1 and the graph's 479 edges"),
    ],
)
def test_discover_refuses_incomplete_search_arguments(toy, kwargs, message):
    """``kwargs`` builds the method: a bad one is refused when built, or by discover before
    any scoring."""
    with pytest.raises(acd.AcdError, match=message):
        acd.discover("ioi", toy[0], method=kwargs(), prompts=4, run=RunConfig(progress=False))


@pytest.mark.slow
def test_discover_acdc_and_hybrid(toy):
    model, graph, _ = toy
    common = {"prompts": 8, "seed": 0, "run": RunConfig(metric="task", progress=False)}
    circuit = acd.discover("ioi", model, method=ACDC(0.03, metric="task"), **common)
    narrow = acd.discover(
        "ioi", model, method=ACDC(0.03, metric="task", rows_per_forward=8), **common
    )
    assert torch.equal(narrow.mask, circuit.mask)  # the width of a forward decides nothing
    expected = acdc(
        model,
        graph,
        acd.load_task("ioi").make_batch(model.tokenizer, 8, 0),
        tau=0.03,
        metric="task",
        progress=False,
    )
    assert torch.equal(circuit.mask, prune_dangling(expected.mask, graph))
    assert torch.equal(circuit.scores, expected.deltas)
    assert circuit.params["tau"] == 0.03 and circuit.params["metric"] == "task"
    assert circuit.metrics["n_selected"] == int(expected.mask.sum())
    assert 0.5 < circuit.metrics["faithfulness"] < 1.5

    common["run"] = RunConfig(progress=False)
    hybrid = acd.discover("ioi", model, method=Hybrid(0.001, candidates=60), **common)
    assert hybrid.params["candidates"] == 60 and hybrid.params["scoring"] == "eap-ig"
    assert hybrid.params["metric"] == "kl" and hybrid.params["visited"] == 60
    assert hybrid.n_edges <= 60
    assert int((hybrid.scores != 0).sum()) <= 60


@pytest.mark.parametrize("method", ["acdc", "exact"])
def test_a_model_that_cannot_restart_is_refused_by_name(toy, monkeypatch, method):
    """Where a run from a cached residual does not reproduce the clean logits, exact scoring
    and ACDC refuse in one line that names the method, rather than return wrong results."""
    import acd.patching.restart as restart

    real = restart.run_from_layer
    monkeypatch.setattr(
        restart, "run_from_layer", lambda *args, **kwargs: real(*args, **kwargs) + 1.0
    )
    model, graph, _ = toy
    batch = acd.load_task("ioi").make_batch(model.tokenizer, 2, 0)
    expected = "ACDC cannot restart" if method == "acdc" else "exact scoring cannot restart"
    with pytest.raises(acd.AcdError, match=expected):
        if method == "acdc":
            acdc(model, graph, batch, tau=0.1, progress=False)
        else:
            acd.attribute(model, graph, batch, "exact", progress=False)
