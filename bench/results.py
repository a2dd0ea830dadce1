"""Every scoring and selection method on the embedded model's three tasks: docs/results.md.

    python bench/results.py               # docs/results.md, docs/results_<task>.png/svg
    python bench/results.py --prompts 50  # quicker, noisier

Circuits are found on ``--prompts`` prompts (seed 0) and evaluated on as many fresh prompts
(seed 1), so the faithfulness is held-out. Each row is one ``acd.discover`` call; its wall time
covers scoring, selection, pruning and the evaluation on the discovery prompts. CPR and CMD
(MIB's areas, acd.curves) are computed from each scoring method's edge scores on the held-out
prompts; searches (greedy, ACDC, hybrid) select one circuit and have no curve.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

import acd
from acd.atomic import atomic_write
from acd.curves import cmd, cpr, plot_faithfulness
from acd.evaluate import evaluate_circuit
from acd.nodes import default_nodes, node_scores_tensor

TASKS = ("ioi", "greater-than", "induction")
TARGET_FRACTION = 0.05  # the target: faithfulness >= 0.9 with <= 5 % of the edges


def runs(graph: acd.ComputeGraph) -> list[tuple[str, dict]]:
    """(label, discover arguments) of every row of a task's table."""
    n_edges = graph.n_edges
    small = math.floor(TARGET_FRACTION * n_edges)
    nodes = default_nodes(graph)
    rows = [
        (f"eap, top {small}", dict(method=acd.EAP(), select=acd.TopN(small))),
        (f"eap-ig, top {small}", dict(method=acd.EAPIG(), select=acd.TopN(small))),
        (
            f"eap-ig-activations, top {small}",
            dict(method=acd.EAPIGActivations(), select=acd.TopN(small)),
        ),
        (
            f"clean-corrupted, top {small}",
            dict(method=acd.CleanCorrupted(), select=acd.TopN(small)),
        ),
        (f"exact, top {small}", dict(method=acd.Exact(), select=acd.TopN(small))),
        (
            f"eap frozen norms, top {small}",
            dict(method=acd.EAP(frozen_norms=True), select=acd.TopN(small)),
        ),
        (
            f"eap-ig frozen norms, top {small}",
            dict(method=acd.EAPIG(frozen_norms=True), select=acd.TopN(small)),
        ),
        (f"eap-ig, greedy {small}", dict(method=acd.EAPIG(), select=acd.Greedy(small))),
    ]
    for tau in (0.003, 0.01, 0.03):
        rows.append((f"acdc, kl, tau {tau}", dict(method=acd.ACDC(tau))))
    rows.append(
        (
            "hybrid: eap-ig top 100, acdc tau 0.01",
            dict(method=acd.Hybrid(0.01, candidates=min(100, n_edges))),
        )
    )
    for method in (acd.EAP(), acd.EAPIG(), acd.Exact()):
        rows.append(
            (
                f"{method.name}, nodes top {nodes}",
                dict(method=method, select=acd.TopN(nodes), level="node"),
            )
        )
    return rows


def measure_task(model, task_name: str, prompts: int, out_dir: Path) -> list[dict]:
    task = acd.load_task(task_name)
    graph = acd.ComputeGraph.from_model(model)
    held_out = task.make_batch(model.tokenizer, prompts, seed=1).to(model.device)
    rows, curves, node_curves = [], {}, {}
    for label, options in runs(graph):
        start = time.perf_counter()
        quiet = acd.RunConfig(progress=False)
        circuit = acd.discover(task, model, prompts=prompts, seed=0, run=quiet, **options)
        seconds = time.perf_counter() - start
        test = evaluate_circuit(model, graph, held_out, circuit.mask, metric=task.metric)
        m = circuit.metrics
        row = dict(
            label=label,
            level=circuit.level,
            nodes=m.get("n_nodes", 0),
            edges=circuit.n_edges,
            percent=100 * circuit.n_edges / graph.n_edges,
            faithfulness=test.faithfulness,
            mean=test.faithfulness_mean,
            std=test.faithfulness_std,
            p05=test.faithfulness_p05,
            p95=test.faithfulness_p95,
            seconds=seconds,
            discovery_seconds=m["seconds"],
            trust_seconds=m.get("trust_seconds"),
            spearman=m.get("trust_fidelity_spearman"),
            sign=m.get("trust_fidelity_sign_agreement"),
            weak=m.get("trust_fidelity_weak_selected"),
            jaccard=m.get("trust_stability_jaccard_mean"),
            cpr=None,
            cmd=None,
            edge_list=circuit.edges,
        )
        # Greedy is a TopN: only the plain top-n rows give the scores' curves.
        if type(options.get("select")) is acd.TopN:
            if circuit.level == "node":
                scores = node_scores_tensor(circuit.node_scores, graph)
            else:
                scores = circuit.scores
            area, _ = cpr(model, graph, held_out, scores, metric=task.metric)
            distance, curve = cmd(model, graph, held_out, scores, metric=task.metric)
            row.update(cpr=area, cmd=distance)
            name = label.split(",")[0]
            (node_curves if circuit.level == "node" else curves)[name] = curve
        rows.append(row)
        print(f"  {task_name:13s} {label:40s} {_row_text(row)}", flush=True)
    plot_faithfulness(
        curves,
        out_dir / f"results_{task_name}",
        title=f"{task_name} on the embedded model: held-out faithfulness by edges kept",
    )
    plot_faithfulness(
        node_curves,
        out_dir / f"results_{task_name}_nodes",
        title=f"{task_name} on the embedded model: held-out faithfulness by nodes kept",
    )
    return rows


def _row_text(row: dict) -> str:
    nodes = f"{row['nodes']:2d} nodes, " if row["level"] == "node" else ""
    return (
        f"{nodes}{row['edges']:4d} edges ({row['percent']:.1f} %)  f {row['faithfulness']:.3f}  "
        f"{row['seconds']:.1f} s"
    )


def _num(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "–"
    return "nan" if math.isnan(value) else f"{value:.{digits}f}"


def _trust_cost(row: dict) -> str:
    """The trust report's seconds and their ratio to the discovery's own."""
    if row["trust_seconds"] is None or (row["spearman"] is None and row["jaccard"] is None):
        return "–"  # no report figures (exact and the searches by default): nothing was spent
    ratio = row["trust_seconds"] / row["discovery_seconds"] if row["discovery_seconds"] else 0
    return f"{row['trust_seconds']:.1f} ({ratio:.1f}×)"


def markdown(results: dict[str, list[dict]], prompts: int, model_name: str, total: float) -> str:
    lines = [
        "# Results on the embedded model",
        "",
        "Every scoring and selection method on the three shipped tasks and the embedded model "
        f"(`{model_name}`, 479 edges, 21 nodes), produced by `python bench/results.py --prompts "
        f"{prompts}` ({total / 60:.1f} min on a 2-core CPU shared with other jobs). Circuits "
        f"are found on {prompts} prompts (seed 0); **faithfulness is measured on {prompts} "
        "fresh prompts (seed 1)**: "
        "the ratio of means (M(circuit) − M(empty)) / (M(full) − M(empty)), then the per-prompt "
        "mean ± standard deviation and 5th–95th percentiles. CPR (area under f, higher is "
        "better) and CMD (area under |1 − f|, lower is better) are MIB's areas over circuits of "
        "0.1 … 100 % of the edges — of the nodes for the node-level rows (acd.curves). Time is "
        "the wall time of the `acd.discover` call, trust report included. ACDC uses KL to the "
        "full model; `tau` is its threshold.",
        "",
        "The trust columns are the trust report every circuit carries (acd.trust, "
        "docs/architecture.md): **fidelity** is the Spearman correlation of the method's "
        "scores with exact patching on 100 sampled edges (every node for node-level rows) on "
        "20 prompts, and the share of them whose sign agrees; **stability** is the mean "
        "Jaccard index of the circuit re-found on 5 random halves of the prompts with the "
        "reported one (node sets for node-level rows); **trust s** is what the report cost, "
        "with its ratio to the discovery's own time. Exact scoring and the searches measure "
        "effects themselves and get no fidelity figures, and their stability is not measured "
        "by default (each resample would cost a whole exact scoring or search).",
        "",
        "Rows: `eap-ig-activations` and `clean-corrupted` are MIB's EAP-IG variants; "
        "`frozen norms` takes the gradients with every LayerNorm's statistics held constant "
        "(GIM); `nodes top 5` keeps whole heads and MLPs (acd.nodes: a removed node is patched "
        "on all its outputs) and counts the edges between the kept nodes.",
        "",
        "Target: for each task some method reaches faithfulness ≥ 0.9 with ≤ 5 % of the edges "
        "(≤ 23 edges).",
        "",
        "What the circuits look like — the previous-token head feeding the induction heads' "
        "keys, IOI's names read at the end by heads that attend to both — and which heads have "
        "which role: [graphs/README.md](../graphs/README.md#what-the-circuits-show).",
    ]
    for task_name, rows in results.items():
        lines += [
            "",
            f"## {task_name}",
            "",
            f"![faithfulness curves](results_{task_name}.svg)",
            f"![node-level faithfulness curves](results_{task_name}_nodes.svg)",
            "",
            "| method | nodes | edges | % | faithfulness | per prompt mean ± std | p05 – p95 "
            "| CPR | CMD | fidelity ρ | sign | stability J | time (s) | trust s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            nodes = str(r["nodes"]) if r["level"] == "node" else "–"
            lines.append(
                f"| {r['label']} | {nodes} | {r['edges']} | {r['percent']:.1f} | "
                f"{_num(r['faithfulness'])} | {_num(r['mean'])} ± {_num(r['std'])} | "
                f"{_num(r['p05'])} – {_num(r['p95'])} | {_num(r['cpr'])} | {_num(r['cmd'])} | "
                f"{_num(r['spearman'], 2)} | {_num(r['sign'], 2)} | {_num(r['jaccard'], 2)} | "
                f"{r['seconds']:.1f} | {_trust_cost(r)} |"
            )
        met = [
            r
            for r in rows
            if r["level"] == "edge"
            and r["percent"] <= 100 * TARGET_FRACTION + 1e-9
            and r["faithfulness"] >= 0.9
        ]
        edge_rows = sum(r["level"] == "edge" for r in rows)
        if met:
            best = max(met, key=lambda r: r["faithfulness"])
            lines += [
                "",
                f"Target met by {len(met)} of {edge_rows} edge-level rows. The best small "
                f"circuit ({best['label']}, {best['edges']} edges, "
                f"f = {best['faithfulness']:.3f}):",
                "",
                "```",
                *(f"{src} -> {dst}" for src, dst in best["edge_list"]),
                "```",
            ]
        else:
            lines += ["", "Target not met by any row."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--out", default="docs", help="folder of results.md and the charts")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    out = Path(args.out)
    start = time.perf_counter()
    model = acd.load_model("toy")
    results = {}
    for task_name in args.tasks.split(","):
        results[task_name] = measure_task(model, task_name, args.prompts, out)
    total = time.perf_counter() - start
    atomic_write(out / "results.md", markdown(results, args.prompts, model.name, total))
    print(
        f"wrote {out / 'results.md'} ({total:.0f} s; median row "
        f"{statistics.median(r['seconds'] for rs in results.values() for r in rs):.1f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
