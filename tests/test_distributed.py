"""Data parallelism and memory-bounded attribution.

The multi-process tests start real process groups (gloo backend, a ``file://`` rendezvous in
the test's tmp_path) by running this file as a script once per rank; every rank scores and
evaluates on its shard of the prompts and writes what it got as JSON, which must equal the
one-process results computed here. Odd prompt counts make the shards uneven, and three ranks
for two prompts leave one rank without prompts (it must still join every collective).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import acd.attribution as attribution
import acd.distributed as distributed
import acd.memory as memory
from acd.attribution import attribute, node_scores
from acd.evaluate import evaluate_circuit
from acd.graph import ComputeGraph
from acd.memory import auto_batch_size, bytes_per_prompt
from acd.models import load_model
from acd.tasks import PromptBatch

# Relative difference allowed between the multi-process and one-process results.
TOL = 1e-6

# Seconds a group of ranks may take before the test gives up on it (a deadlock, say).
RANK_TIMEOUT_S = 120

# What each rank computes: (name, method, ablation).
SCORES = (
    ("eap", "eap", "corrupted"),
    ("eap_ig", "eap-ig", "corrupted"),
    ("exact", "exact", "corrupted"),
    ("eap_mean", "eap", "mean"),
    ("exact_mean", "exact", "mean"),
)


# --------------------------------------------------------------------------------------------
# The computation every rank (and the one-process reference) runs


def ragged_batch(n: int, seed: int = 0, width: int = 8) -> PromptBatch:
    """Random clean/corrupted token ids of different lengths (right-padded with 0), scored at
    each prompt's last token by logit difference."""
    generator = torch.Generator().manual_seed(seed)
    clean, corrupted = torch.randint(1, 50, (2, n, width), generator=generator)
    lengths = torch.randint(width - 3, width + 1, (n,), generator=generator)
    pad = torch.arange(width)[None, :] >= lengths[:, None]
    clean[pad], corrupted[pad] = 0, 0
    answers = torch.randint(1, 50, (2, n, 1), generator=generator)
    return PromptBatch.from_token_ids(
        clean,
        corrupted,
        lengths=lengths,
        correct=answers[0],
        wrong=answers[1],
        metric="logit_diff",
    )


def fixed_circuit(graph: ComputeGraph) -> torch.Tensor:
    """A random half of the valid edges, the same in every process: [n_src, n_dst] bool."""
    keep = torch.rand(graph.valid.shape, generator=torch.Generator().manual_seed(1)) < 0.5
    return keep & graph.valid


def compute_all(model_dir: str, n_prompts: int) -> dict[str, list]:
    """Every score and evaluation the test compares, as JSON-ready lists."""
    model = load_model(model_dir, device="cpu", dtype=torch.float64)
    graph = ComputeGraph.from_model(model)
    batch = ragged_batch(n_prompts)
    out: dict[str, list] = {}
    for name, method, ablation in SCORES:
        scores = attribute(
            model, graph, batch, method, ablation=ablation, ig_steps=3, progress=False
        )
        out[name] = scores.tolist()
    out["nodes_exact"] = node_scores(model, graph, batch, "exact", progress=False).tolist()
    for ablation in ("corrupted", "mean"):
        evaluation = evaluate_circuit(model, graph, batch, fixed_circuit(graph), ablation=ablation)
        out[f"eval_{ablation}_per_prompt"] = [
            evaluation.circuit.tolist(),
            evaluation.full.tolist(),
            evaluation.empty.tolist(),
            evaluation.kl_to_full.tolist(),
        ]
        summary = evaluation.summary()
        out[f"eval_{ablation}_summary"] = [
            summary[key] for key in sorted(summary) if isinstance(summary[key], float)
        ]
    return out


def _rank_main(model_dir: str, n_prompts: int, rank: int, size: int, rendezvous: str) -> None:
    """One rank: join the group, compute, write ``<rendezvous>.rank<r>.json``."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=size)
    try:
        assert distributed.is_distributed()
        results = compute_all(model_dir, n_prompts)
        results["shard"] = [distributed.shard(n_prompts).start, distributed.shard(n_prompts).stop]
        Path(f"{rendezvous}.rank{rank}.json").write_text(json.dumps(results))
        # No rank tears down before all are done: gloo aborts a rank ("terminate called
        # without an active exception") whose peer closed its connections under it.
        dist.barrier()
    finally:
        dist.destroy_process_group()


# --------------------------------------------------------------------------------------------
# Running ranks and comparing


def run_ranks(model_dir: Path, n_prompts: int, size: int, tmp_path: Path) -> list[dict]:
    """Start ``size`` ranks of this file as a script; their results in rank order."""
    rendezvous = tmp_path / f"rendezvous-{size}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1]), env.get("PYTHONPATH", "")])
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, str(model_dir), str(n_prompts), str(r), str(size)]
            + [str(rendezvous)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(size)
    ]
    logs = []
    try:
        for proc in procs:
            logs.append(proc.communicate(timeout=RANK_TIMEOUT_S)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for r, (proc, log) in enumerate(zip(procs, logs)):
        assert proc.returncode == 0, f"rank {r} failed:\n{log[-3000:]}"
    return [json.loads(Path(f"{rendezvous}.rank{r}.json").read_text()) for r in range(size)]


def assert_close(got: list, want: list, what: str) -> None:
    got_t, want_t = torch.tensor(got, dtype=torch.float64), torch.tensor(want, dtype=torch.float64)
    assert got_t.shape == want_t.shape, what
    scale = float(want_t.nan_to_num().abs().max()) or 1.0
    error = float((got_t - want_t).nan_to_num().abs().max()) / scale
    assert bool((got_t.isnan() == want_t.isnan()).all()), f"{what}: NaNs differ"
    assert error <= TOL, f"{what}: relative difference {error:.3g}"


def check_ranks(ranks: list[dict], reference: dict, n_prompts: int) -> None:
    shards = [tuple(r.pop("shard")) for r in ranks]
    assert shards[0][0] == 0 and shards[-1][1] == n_prompts
    assert all(a[1] == b[0] for a, b in zip(shards, shards[1:])), shards
    for r, results in enumerate(ranks):
        assert results.keys() == reference.keys()
        for key, want in reference.items():
            assert_close(results[key], want, f"rank {r}: {key}")


@pytest.mark.slow
@pytest.mark.parametrize(("n_prompts", "size"), [(7, 2), (2, 3)])
def test_ranks_reproduce_the_one_process_results(tiny_gpt2_dir, tmp_path, n_prompts, size):
    ranks = run_ranks(tiny_gpt2_dir, n_prompts, size, tmp_path)
    check_ranks(ranks, compute_all(str(tiny_gpt2_dir), n_prompts), n_prompts)


# --------------------------------------------------------------------------------------------
# Sharding without a process group


@pytest.mark.parametrize(("n", "size"), [(7, 2), (2, 3), (0, 2), (10, 4)])
def test_shards_cover_every_item_once(monkeypatch, n, size):
    shards = []
    for rank in range(size):
        monkeypatch.setattr(distributed, "rank_and_size", lambda r=rank: (r, size))
        shards.append(distributed.shard(n))
    covered = [i for s in shards for i in range(n)[s]]
    assert covered == list(range(n))
    lengths = [len(range(n)[s]) for s in shards]
    assert max(lengths) - min(lengths) <= 1


def test_one_process_collectives_are_the_identity():
    x = torch.arange(6.0).reshape(3, 2)
    assert not distributed.is_distributed()
    assert distributed.rank_and_size() == (0, 1) and distributed.is_main()
    assert distributed.shard(5) == slice(0, 5)
    assert torch.equal(distributed.all_reduce_sum(x), x)
    assert torch.equal(distributed.all_gather_rows(x), x)


# --------------------------------------------------------------------------------------------
# Memory-bounded attribution


@pytest.fixture(scope="module")
def tiny(tiny_gpt2_dir):
    model = load_model(tiny_gpt2_dir, device="cpu", dtype=torch.float64)
    return model, ComputeGraph.from_model(model), ragged_batch(7)


def test_auto_batch_size_fits_the_buffers_in_a_fraction_of_free_memory(tiny, monkeypatch):
    model, graph, batch = tiny
    per_prompt = bytes_per_prompt(model, graph, batch.clean.shape[1], "eap")
    # EAP holds at least the clean sources, patch and difference [pos, n_src, d_model] and
    # the gradients [pos, n_dst, d_model], in float64 here.
    pos, d = batch.clean.shape[1], model.spec.d_model
    assert per_prompt >= 8 * pos * d * (3 * graph.n_src + 2 * graph.n_dst)
    assert bytes_per_prompt(model, graph, pos, "eap-ig", ig_steps=3) > per_prompt

    monkeypatch.setattr(memory, "free_memory_bytes", lambda device: 4 * 3 * per_prompt)
    assert auto_batch_size(model, graph, batch, "eap") == 3  # a quarter of 12 prompts' worth
    assert auto_batch_size(model, graph, batch, "eap", fraction=0.5) == 6
    monkeypatch.setattr(memory, "free_memory_bytes", lambda device: 10)
    assert auto_batch_size(model, graph, batch, "eap") == 1  # never fewer than one prompt
    monkeypatch.setattr(memory, "free_memory_bytes", lambda device: 1 << 50)
    assert auto_batch_size(model, graph, batch, "eap") == len(batch)  # never more than all
    monkeypatch.setattr(memory, "free_memory_bytes", lambda device: None)
    assert auto_batch_size(model, graph, batch, "exact") == len(batch)  # unknown: no chunking


def test_free_memory_is_read_on_the_cpu():
    free = memory.free_memory_bytes("cpu")
    assert free is None or free > 0


@pytest.mark.parametrize("method", ["eap", "eap-ig", "exact"])
def test_automatic_chunks_and_source_blocks_do_not_change_scores(tiny, monkeypatch, method):
    model, graph, batch = tiny
    whole = attribute(model, graph, batch, method, batch_size=len(batch), progress=False)
    per_prompt = bytes_per_prompt(model, graph, batch.clean.shape[1], method)
    # Room for two prompts per chunk, and EAP's difference formed a few sources at a time.
    monkeypatch.setattr(memory, "free_memory_bytes", lambda device: 4 * 2 * per_prompt)
    monkeypatch.setattr(attribution, "DIFF_BLOCK_BYTES", 3 * 8 * 2 * batch.clean.shape[1] * 32)
    chunked = attribute(model, graph, batch, method, progress=False)
    scale = float(whole.abs().max())
    assert float((chunked - whole).abs().max()) <= TOL * scale


# --------------------------------------------------------------------------------------------
# device_map


def test_device_map_on_one_device_gives_the_same_logits(tiny_gpt2_dir, tiny):
    model = tiny[0]
    mapped = load_model(tiny_gpt2_dir, dtype=torch.float64, device_map={"": "cpu"})
    assert mapped.device == torch.device("cpu")
    tokens = ragged_batch(3).clean
    with torch.no_grad():
        assert torch.allclose(mapped.bridge(tokens), model.bridge(tokens), rtol=0, atol=1e-12)
    graph = ComputeGraph.from_model(mapped)
    batch = ragged_batch(3)
    got = attribute(mapped, graph, batch, "eap", progress=False)
    want = attribute(model, graph, batch, "eap", progress=False)
    assert torch.allclose(got, want, rtol=0, atol=1e-12)


def test_device_and_device_map_together_are_refused(tiny_gpt2_dir):
    from acd.models.load import ModelError

    with pytest.raises(ModelError, match="either device or device_map"):
        load_model(tiny_gpt2_dir, device="cpu", device_map={"": "cpu"})


if __name__ == "__main__":  # one rank of run_ranks
    _model_dir, _n, _rank, _size, _rendezvous = sys.argv[1:6]
    _rank_main(_model_dir, int(_n), int(_rank), int(_size), _rendezvous)
