"""Speed of ACDC: batched speculation and restarts from cached residuals, against the plain loop.

    python bench/bench_acdc.py [--prompts 50] [--runs 3] [--tau 0.001] [--gpt2-layers 2]
                               [--gpt2-prompts 8] [--threads 1] [--only toy|gpt2]

Toy (the embedded model, IOI, ``--prompts`` prompts, KL, ``--tau``), every time the median of
``--runs`` runs after a warm-up:

    plain        ACDC one edge per forward: every evaluation a full ``run_patched`` forward of
                 all prompts (the loop of Conmy et al.), M(current) carried over
    restart      ``acdc(rows_per_forward=prompts)``: one circuit per forward, each starting at
                 the visited destination's block from the cached residual
    speculative  ``acdc`` with ``--rows`` (row, prompt) pairs per forward (default: the
                 library's default): several speculative circuits per forward

All three must find the same circuit (checked). GPT-2-shaped: a model from
``transformers.GPT2Config()`` (random weights, vocabulary 50257: the toy's words padded with
dummy tokens) with ``--gpt2-layers`` layers (12 is GPT-2 small; fewer keep a CPU run short),
IOI prompts; ACDC over every edge once, reported as seconds per edge.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from bench_engine import build_gpt2_dir  # the script's own folder is on sys.path

import acd
from acd.acdc import ROWS_PER_FORWARD, acdc
from acd.graph import ComputeGraph
from acd.metrics import get_metric
from acd.patching import patch_values, run_and_collect, run_patched


def plain_acdc(model, graph, batch, tau: float) -> tuple[torch.Tensor, int]:
    """ACDC with KL, one edge per full patched forward: (kept mask, forwards)."""
    patch = patch_values(model, graph, batch)
    clean_logits = run_and_collect(model, graph, batch.clean)[0]
    kl = get_metric("kl", clean_logits)

    def mean_kl(kept: torch.Tensor) -> float:
        logits = run_patched(model, graph, batch.clean, graph.valid & ~kept, patch)
        return float(kl(logits, batch).double().mean())

    kept = graph.valid.clone()
    current, forwards = mean_kl(kept), 3
    for v in reversed(range(graph.n_dst)):
        for u in reversed(kept[:, v].nonzero().flatten().tolist()):
            kept[u, v] = False
            without = mean_kl(kept)
            forwards += 1
            if without - current < tau:
                current = without
            else:
                kept[u, v] = True
    return kept, forwards


def timed(fn, runs: int):
    """(median seconds over ``runs`` runs after one warm-up, the last result)."""
    result = fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def bench_toy(args) -> None:
    model = acd.load_model("toy", device="cpu")
    graph = ComputeGraph.from_model(model)
    batch = acd.load_task("ioi").make_batch(model.tokenizer, args.prompts, 0)
    rows = args.rows or ROWS_PER_FORWARD
    kwargs = {"tau": args.tau, "progress": False}
    plain_s, (plain_mask, plain_forwards) = timed(
        lambda: plain_acdc(model, graph, batch, args.tau), args.runs
    )
    restart_s, restart = timed(
        lambda: acdc(model, graph, batch, rows_per_forward=len(batch), **kwargs), args.runs
    )
    spec_s, spec = timed(
        lambda: acdc(model, graph, batch, rows_per_forward=rows, **kwargs), args.runs
    )
    assert torch.equal(plain_mask, restart.mask) and torch.equal(plain_mask, spec.mask)
    print(f"toy: {graph.n_edges} edges, IOI {tuple(batch.clean.shape)}, KL, tau {args.tau}, "
          f"kept {int(spec.mask.sum())}, median of {args.runs}")  # fmt: skip
    print("| variant | rows/forward | forwards | circuits evaluated | seconds | vs plain |")
    print("|---|---|---|---|---|---|")
    for name, r, forwards, circuits, seconds in (
        ("plain (one edge, full forward)", len(batch), plain_forwards, plain_forwards - 2, plain_s),
        ("restart (one edge, from its block)", len(batch), restart.n_forwards, restart.n_circuits,
         restart_s),
        ("speculative", rows, spec.n_forwards, spec.n_circuits, spec_s),
    ):  # fmt: skip
        print(
            f"| {name} | {r} | {forwards} | {circuits} | {seconds:.3f} | {plain_s / seconds:.2f}x |"
        )


def bench_gpt2(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        model = acd.load_model(build_gpt2_dir(Path(tmp), args.gpt2_layers), device="cpu")
    graph = ComputeGraph.from_model(model)
    batch = acd.load_task("ioi").make_batch(model.tokenizer, args.gpt2_prompts, 0)
    rows = args.rows or ROWS_PER_FORWARD
    result = acdc(model, graph, batch, tau=args.tau, rows_per_forward=rows, progress=False)
    print(
        f"gpt2-shaped, {args.gpt2_layers} layers: {graph.n_edges} edges, IOI "
        f"{tuple(batch.clean.shape)}, KL, tau {args.tau}, rows/forward {rows}: "
        f"{result.seconds:.1f} s, {result.n_forwards} forwards, {result.n_circuits} circuits "
        f"evaluated, kept {int(result.mask.sum())}, "
        f"{1000 * result.seconds / result.visited:.1f} ms per edge"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tau", type=float, default=0.001)
    parser.add_argument("--rows", type=int, default=None, help="rows per forward (speculative)")
    parser.add_argument("--gpt2-layers", type=int, default=2)
    parser.add_argument("--gpt2-prompts", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--only", choices=["toy", "gpt2"], default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s)")
    if args.only in (None, "toy"):
        bench_toy(args)
    if args.only in (None, "gpt2"):
        bench_gpt2(args)


if __name__ == "__main__":
    main()
