"""Positional against plain circuits on the embedded model: docs/positional.md.

    python bench/positional.py               # docs/positional.md
    python bench/positional.py --prompts 20  # quicker, noisier

For each task, EAP-IG scores every plain edge and every positional edge (acd.positional) on
``--prompts`` prompts (seed 0); the top-n plain circuit and the top-n positional circuit (both
pruned) are evaluated on as many fresh prompts (seed 1) at the same n. A positional edge is
part of a plain edge (one span of its source, one of its destination's), so at equal n the
positional circuit keeps less of the model; the table shows the faithfulness each reaches and
the smallest n at which each reaches 0.8 and 0.9. Timings are medians of ``--repeats`` runs of
each scoring, measured in the same process.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

import acd
from acd.atomic import atomic_write
from acd.attribution import attribute
from acd.evaluate import evaluate_circuits
from acd.positional import (
    PositionalGraph,
    evaluate_positional_with,
    positional_runner,
    positional_scores,
    prune_positional,
)
from acd.search import prune_dangling, select_topn

TASKS = ("ioi", "greater-than", "induction")
SIZES = (2, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96)
LEVELS = (0.8, 0.9)


def median_seconds(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def task_rows(model, task_name: str, prompts: int, repeats: int) -> dict:
    task = acd.load_task(task_name)
    graph = acd.ComputeGraph.from_model(model)
    found = task.make_batch(model.tokenizer, prompts, seed=0)
    held = task.make_batch(model.tokenizer, prompts, seed=1)
    pgraph = PositionalGraph.from_batch(graph, found)
    plain_s, plain = median_seconds(
        lambda: attribute(model, graph, found, "eap-ig", batch_size=8, progress=False), repeats
    )
    pos_s, positional = median_seconds(
        lambda: positional_scores(model, pgraph, found, "eap-ig", batch_size=8, progress=False),
        repeats,
    )
    assert isinstance(plain, torch.Tensor) and isinstance(positional, torch.Tensor)
    sizes = [n for n in SIZES if n <= graph.n_edges]
    plain_masks = torch.stack(
        [prune_dangling(select_topn(plain, graph.valid, n), graph) for n in sizes]
    )
    pos_masks = torch.stack(
        [prune_positional(select_topn(positional, pgraph.valid, n), pgraph) for n in sizes]
    )
    plain_eval = evaluate_circuits(model, graph, held, plain_masks, batch_size=8)
    forward_plain, forward_positional = patched_forward_seconds(
        model, graph, pgraph, found, repeats
    )
    held_pgraph = PositionalGraph.from_batch(graph, held)
    runner = positional_runner(model, held_pgraph, held, batch_size=8)
    # The held-out prompts' positional graph may allow more parts; the circuits are the same.
    pos_eval = evaluate_positional_with(runner, held_pgraph, pos_masks & held_pgraph.valid)
    return {
        "task": task_name,
        "spans": list(pgraph.spans),
        "plain_edges": graph.n_edges,
        "positional_edges": pgraph.n_edges,
        "plain_seconds": plain_s,
        "positional_seconds": pos_s,
        "sizes": sizes,
        "plain": [e.faithfulness for e in plain_eval],
        "plain_kept": [int(m.sum()) for m in plain_masks],
        "positional": [e.faithfulness for e in pos_eval],
        "positional_kept": [int(m.sum()) for m in pos_masks],
        "positional_plain_kept": [int(pgraph.plain_mask(m).sum()) for m in pos_masks],
        "forward_plain": forward_plain,
        "forward_positional": forward_positional,
    }


def patched_forward_seconds(model, graph, pgraph, batch, repeats: int) -> tuple[float, float]:
    """Median seconds of one patched forward of 8 prompts: plain (``run_patched``) and
    positional (``run_positional_patched``, P copies): what one ACDC edge test costs."""
    from acd.patching import collect_sources, run_patched
    from acd.positional.runs import run_positional_patched

    chunk = batch.select(list(range(min(8, len(batch)))))
    patch = collect_sources(model, graph, chunk.corrupted)
    plain_mask = torch.rand(graph.valid.shape, generator=torch.Generator().manual_seed(0)) < 0.5
    pos_mask = plain_mask[:, None, :, None].expand(pgraph.shape)
    plain, _ = median_seconds(
        lambda: run_patched(model, graph, chunk.clean, plain_mask, patch), repeats + 2
    )
    positional, _ = median_seconds(
        lambda: run_positional_patched(
            model, pgraph, chunk.clean, chunk.span_index, pos_mask, patch
        ),
        repeats + 2,
    )
    return plain, positional


def smallest_reaching(sizes: list[int], values: list[float], level: float) -> str:
    for n, f in zip(sizes, values):
        if f >= level:
            return str(n)
    return f"> {sizes[-1]}"


def markdown(rows: list[dict], prompts: int, repeats: int, seconds: float) -> str:
    lines = [
        "# Positional against plain circuits (embedded model `toy`)",
        "",
        "Written by `python bench/positional.py"
        + (f" --prompts {prompts}" if prompts != 40 else "")
        + f"` in {seconds:.0f} s. EAP-IG (5 steps) scores on {prompts} prompts (seed 0); every "
        "circuit is the top n edges, pruned, evaluated on "
        f"{prompts} fresh prompts (seed 1); faithfulness = (M(C) − M(∅)) / (M(full) − M(∅)) "
        "with corrupted patching. A positional edge is one span of a plain edge's source and "
        "one of its destination's (for a key or value input: the span of the keys and the span "
        "of the queries reading them), so its circuit keeps less of the model at equal n. "
        f"Scoring times are medians of {repeats} runs in the same process (2 shared CPU cores).",
        "",
        "## Edges needed",
        "",
        "| task | spans | plain edges | positional edges | n for f ≥ 0.8 (plain / positional) "
        "| n for f ≥ 0.9 (plain / positional) | scoring s (plain / positional, ratio) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        need = [
            f"{smallest_reaching(r['sizes'], r['plain'], lv)} / "
            f"{smallest_reaching(r['sizes'], r['positional'], lv)}"
            for lv in LEVELS
        ]
        ratio = r["positional_seconds"] / r["plain_seconds"]
        lines.append(
            f"| {r['task']} | {', '.join(r['spans'])} | {r['plain_edges']} | "
            f"{r['positional_edges']} | {need[0]} | {need[1]} | "
            f"{r['plain_seconds']:.2f} / {r['positional_seconds']:.2f} ({ratio:.1f}×) |"
        )
    lines += [
        "",
        "## Cost of a positional ACDC",
        "",
        "ACDC tests every edge with one patched forward per prompt chunk, so its cost grows "
        "with edges × the cost of one forward. acd does not run ACDC over positional edges; "
        "the estimate below is (positional edges × positional forward) / (plain edges × plain "
        "forward), from one patched forward of 8 prompts (median).",
        "",
        "| task | plain forward ms | positional forward ms (P copies) | ACDC cost ratio |",
        "|---|---|---|---|",
    ]
    for r in rows:
        ratio = (r["positional_edges"] * r["forward_positional"]) / (
            r["plain_edges"] * r["forward_plain"]
        )
        lines.append(
            f"| {r['task']} | {1000 * r['forward_plain']:.1f} | "
            f"{1000 * r['forward_positional']:.1f} ({len(r['spans'])}) | {ratio:.0f}× |"
        )
    for r in rows:
        lines += [
            "",
            f"## {r['task']}: faithfulness at n edges",
            "",
            "Kept: edges left after pruning. Share: kept positional edges over all positional "
            "edges, against kept plain edges over all plain edges — how much of the model "
            "each circuit leaves unpatched.",
            "",
            "| n | plain f (kept, share) | positional f (kept, share; plain edges touched) |",
            "|---|---|---|",
        ]
        for i, n in enumerate(r["sizes"]):
            plain_share = r["plain_kept"][i] / r["plain_edges"]
            pos_share = r["positional_kept"][i] / r["positional_edges"]
            lines.append(
                f"| {n} | {r['plain'][i]:.3f} ({r['plain_kept'][i]}, {100 * plain_share:.1f} %) "
                f"| {r['positional'][i]:.3f} ({r['positional_kept'][i]}, "
                f"{100 * pos_share:.2f} %; {r['positional_plain_kept'][i]}) |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent.parent / "docs/positional.md"))
    args = parser.parse_args(argv)
    start = time.perf_counter()
    model = acd.load_model("toy")
    rows = []
    for name in TASKS:
        row = task_rows(model, name, args.prompts, args.repeats)
        rows.append(row)
        print(
            f"{name}: plain {row['plain']} / positional {row['positional']} "
            f"({row['plain_seconds']:.2f} s / {row['positional_seconds']:.2f} s)",
            flush=True,
        )
    text = markdown(rows, args.prompts, args.repeats, time.perf_counter() - start)
    atomic_write(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
