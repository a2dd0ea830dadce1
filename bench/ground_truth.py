"""Every method against circuits known from outside: the compiled (tracr) programs.

    python bench/ground_truth.py [--prompts 100] [--only reverse,sort] [--out FILE.md]

For every compiled program in acd/models/compiled/ (docs/ground_truth.md), every ablation
(corrupted, zero) and every method (eap, eap-ig, eap-ig-activations, clean-corrupted, exact,
acdc at three tau, hybrid, and eap, eap-ig and exact at node level), one ``acd.discover``
run on the program's task (tasks/compiled/<name>.toml), scored against the program's true
circuit under that ablation *on the task's inputs*: ``acd.ground_truth.derive`` over every
input of the task's length (distinct symbols for ``sort``), each paired with another
one. (graphs/ground_truth/ holds the true circuits over the whole input space, every length; a
task's prompts share one length, and an edge that matters only at other lengths cannot be
found from them.) ACDC and hybrid search with the task's own metric.

    AUC        edge ROC AUC of |score| (for ACDC and hybrid: |delta|) against the true edges,
               over all valid edges (``acd.comparison.compare``); ties count one half
    P / R      precision and recall of the circuit the method selects: the scoring methods keep
               as many edges as the true circuit has (TopN(n_true), then pruned), ACDC and
               hybrid keep what they keep
    node AUC   ROC AUC of the source nodes against the true circuit's source nodes: for edge
               rows by the sum of the node's edge scores, for the node-level rows ("... nodes",
               TopN over as many nodes as the true circuit has, acd.nodes) by their node scores
    faith      the selected circuit's faithfulness on the discovery prompts
    fid ρ      the trust report's fidelity (Spearman of the scores with exact patching, gradient
               methods only), stab J its stability (mean Jaccard over 5 prompt halves)
    s          seconds of the discover call (trust report included)

Programs whose true circuit is not defined under an ablation (the task's sanity gate refuses
it: clean and corrupted outputs never differ) are listed with the reason. Prints a Markdown
table (and writes it with ``--out``); the medians per method close the table.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import acd
from acd.comparison import compare, source_node_auc
from acd.errors import AcdError
from acd.ground_truth import GroundTruthError, derive, program_batches
from acd.methods import ACDC, EAP, EAPIG, CleanCorrupted, EAPIGActivations, Exact, Hybrid, TopN
from acd.nodes import node_scores_tensor

ABLATIONS = ("corrupted", "zero")
TAUS = (1e-4, 1e-3, 1e-2)


def methods(n_true: int, n_edges: int, metric: str) -> list[tuple[str, object, object]]:
    """(label, method, selection) of each row; the searches use the task's ``metric``."""
    top = TopN(min(n_true, n_edges))
    rows: list[tuple[str, object, object]] = [
        ("eap", EAP(), top),
        ("eap-ig", EAPIG(), top),
        ("eap-ig-activations", EAPIGActivations(), top),
        ("clean-corrupted", CleanCorrupted(), top),
        ("exact", Exact(), top),
    ]
    rows += [(f"acdc tau {tau:g}", ACDC(tau, metric=metric), None) for tau in TAUS]
    candidates = max(1, min(n_edges, 2 * n_true))
    hybrid = Hybrid(1e-3, metric=metric, candidates=candidates)
    rows.append((f"hybrid top {candidates}, tau 1e-3", hybrid, None))
    return rows


def true_mask(model, graph: acd.ComputeGraph, task, ablation: str):
    """The true circuit [n_src, n_dst] bool on every input of the task's length, or the reason
    there is none (a string)."""
    batches = [b for b in program_batches(model) if b.clean.shape[1] == task.length + 1]
    if not batches:
        return f"no two inputs of length {task.length}"
    try:
        return derive(model, graph, batches, ablation).mask
    except GroundTruthError as failed:
        return f"check failed: {str(failed)[:80]}"


def measure(name: str, ablation: str, prompts: int) -> list[dict]:
    model = acd.load_model(f"compiled/{name}")
    task = acd.load_task(f"compiled/{name}")
    graph = acd.ComputeGraph.from_model(model)
    truth = true_mask(model, graph, task, ablation)
    base = {"program": name, "ablation": ablation, "edges": graph.n_edges}
    if isinstance(truth, str):
        return [{**base, "note": truth}]
    n_true = int(truth.sum())
    if n_true == 0:
        return [{**base, "true": 0, "note": "empty true circuit: no output depends on an edge"}]
    base["true"] = n_true
    run = acd.RunConfig(ablation=ablation, progress=False)
    rows = []
    # heads and MLPs of the true circuit (node-level TopN counts them; input is always kept)
    true_nodes = int(truth.any(dim=1)[1:].sum())
    node_rows = [
        (f"{m.name} nodes", m, TopN(true_nodes), "node") for m in (EAP(), EAPIG(), Exact())
    ]
    edge_rows = [(*row, "edge") for row in methods(n_true, graph.n_edges, task.metric)]
    for label, method, select, level in edge_rows + node_rows:
        start = time.perf_counter()
        try:
            circuit = acd.discover(
                task,
                model,
                method=method,
                select=select,
                prompts=prompts,
                seed=0,
                run=run,
                level=level,
            )
        except AcdError as refused:
            return [{**base, "note": f"refused: {str(refused)[:90]}..."}]
        seconds = time.perf_counter() - start
        by_score = compare(graph, circuit.scores.double(), truth)
        kept = compare(graph, circuit.mask, truth)
        if level == "node":  # node rows: their node scores against the true source nodes
            node_auc = source_node_auc(graph, node_scores_tensor(circuit.node_scores, graph), truth)
        else:
            node_auc = source_node_auc(graph, circuit.scores.double().sum(dim=1), truth)
        m = circuit.metrics
        rows.append(
            {
                **base,
                "method": label,
                "family": label.split(" top")[0],  # hybrid rows differ only in their K
                "auc": by_score.edge_roc_auc if level == "edge" else None,
                "node_auc": node_auc,
                "spearman": m.get("trust_fidelity_spearman"),
                "jaccard": m.get("trust_stability_jaccard_mean"),
                "precision": kept.edge_precision,
                "recall": kept.edge_recall,
                "kept": circuit.n_edges,
                "faithfulness": circuit.metrics["faithfulness"],
                "seconds": seconds,
            }
        )
    return rows


def _cell(value, digits: int = 2) -> str:
    if value is None or value != value:  # None or NaN
        return "—"
    return f"{value:.{digits}f}"


def table(rows: list[dict]) -> str:
    lines = [
        "| program | ablation | edges | true | method | AUC | node AUC | P | R | kept | faith "
        "| fid ρ | stab J | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "note" in r:
            lines.append(
                f"| {r['program']} | {r['ablation']} | {r['edges']} | {r.get('true', '—')} "
                f"| {r['note']} | | | | | | | | | |"
            )
            continue
        lines.append(
            f"| {r['program']} | {r['ablation']} | {r['edges']} | {r['true']} | {r['method']} "
            f"| {_cell(r['auc'])} | {_cell(r['node_auc'])} | {_cell(r['precision'])} "
            f"| {_cell(r['recall'])} | {r['kept']} | {_cell(r['faithfulness'])} "
            f"| {_cell(r['spearman'])} | {_cell(r['jaccard'])} | {r['seconds']:.1f} |"
        )
    lines += [
        "",
        "| method | ablation | median AUC | min AUC | median node AUC | median fid ρ "
        "| median stab J | runs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for ablation in ABLATIONS:
        families = dict.fromkeys(r["family"] for r in rows if "family" in r)
        for label in families:
            runs = [r for r in rows if r.get("family") == label and r["ablation"] == ablation]
            if runs:
                lines.append(
                    f"| {label} | {ablation} | {_median(runs, 'auc')} | {_least(runs, 'auc')} "
                    f"| {_median(runs, 'node_auc')} | {_median(runs, 'spearman')} "
                    f"| {_median(runs, 'jaccard')} | {len(runs)} |"
                )
    return "\n".join(lines)


def _known(runs: list[dict], key: str) -> list[float]:
    return [r[key] for r in runs if r.get(key) is not None and r[key] == r[key]]


def _median(runs: list[dict], key: str) -> str:
    values = _known(runs, key)
    return _cell(statistics.median(values)) if values else "—"


def _least(runs: list[dict], key: str) -> str:
    values = _known(runs, key)
    return _cell(min(values)) if values else "—"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--only", default=None, help="comma-separated program names")
    parser.add_argument("--ablations", default=",".join(ABLATIONS))
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()
    from acd.models.compiled import compiled_models_dir

    names = sorted(p.name for p in compiled_models_dir().iterdir() if p.is_dir())
    if args.only:
        names = [n for n in names if n in args.only.split(",")]
    rows = []
    for name in names:
        for ablation in args.ablations.split(","):
            measured = measure(name, ablation, args.prompts)
            for r in measured:
                print(
                    f"  {name:15s} {ablation:9s} {r.get('method', r.get('note', '')):28s} "
                    f"AUC {_cell(r.get('auc'))}",
                    flush=True,
                )
            rows += measured
    text = table(rows)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
