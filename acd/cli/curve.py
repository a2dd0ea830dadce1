"""``acd curve``: chart faithfulness against circuit size for edge-scoring methods, and write
the curves as JSON (<stem>.json, for ``acd render --format html --curve``)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from acd.cli.common import load_command_model, quiet_transformers, table
from acd.errors import AcdError
from acd.outputs import curve_stem
from acd.preflight import check_memory, check_out_stem, prompt_tokens
from acd.run_checks import check_model, curve_prompts


def cmd_curve(args: argparse.Namespace) -> int:
    """Score the edges with each method, evaluate its curve circuits, chart and print them."""
    from acd.curves import plot_faithfulness
    from acd.distributed import init_from_env, is_main
    from acd.graph import ComputeGraph
    from acd.tasks import load_task

    init_from_env()
    quiet_transformers()
    if args.positions and args.level == "node":
        raise AcdError("--positions ranks positional edges: not with --level node")
    default = "eap,eap-ig" if args.positions else "eap,eap-ig,exact"
    methods = _methods(args.methods or default)
    task = load_task(args.task)
    stem = curve_stem(args.out, task.name)
    check_out_stem(stem)
    config = check_model(args.model, args.device)
    n, sample = curve_prompts(task, args.prompts, args.seed)
    check_memory(n, prompt_tokens(sample), config, args.batch_size, args.device)
    main_rank = is_main()
    model = load_command_model(args.model, args.device, args.dtype, quiet=not main_rank)
    graph = ComputeGraph.from_model(model)
    batch = task.make_batch(model.tokenizer, n, args.seed).to(model.device)
    if args.positions and len(batch.span_names) < 2:
        raise AcdError(
            f"task {task.name!r} names no spans, so --positions would give the plain curve "
            '(docs/tasks.md, "Spans")'
        )
    metric = args.metric or task.metric
    curves, rows = {}, [("method", "CPR (higher better)", "CMD (lower better)", "seconds")]
    for method in methods:
        start = time.perf_counter()
        area, distance, curves[method] = _method_curve(
            args, model, graph, batch, method, metric, main_rank
        )
        rows.append(
            (method, f"{area:.4f}", f"{distance:.4f}", f"{time.perf_counter() - start:.1f}")
        )
    if not main_rank:
        return 0
    unit = "positional edges" if args.positions else "nodes" if args.level == "node" else "edges"
    title = f"{task.name} on {model.name}: faithfulness by {unit} kept (|score| order)"
    paths = plot_faithfulness(curves, stem, title=title)
    paths.append(_write_curves_json(curves, stem, task=task.name, model=model.name))
    print(table(rows))
    print(f"\nfaithfulness at each point ({unit} kept by |score|):")
    print(table(_points_table(curves, methods, unit)))
    print("\nwrote " + ", ".join(str(p) for p in paths))
    return 0


def _write_curves_json(curves: dict, stem: Path, *, task: str, model: str) -> Path:
    """<stem>.json: every method's ``FaithfulnessCurve.summary()`` (non-finite values as null),
    the file ``acd render --format html --curve`` reads (it takes the circuit's method's
    curve if the file has one, else the first)."""
    from acd.atomic import atomic_write
    from acd.export.html_page import curves_document

    summaries = {method: curve.summary() for method, curve in curves.items()}
    doc = curves_document(summaries, task=task, model=model)
    text = json.dumps(doc, indent=1, allow_nan=False) + "\n"
    return atomic_write(stem.with_name(stem.name + ".json"), text)


def _methods(text: str) -> list[str]:
    """The scoring methods of --methods (comma-separated), refused when unknown or none."""
    from acd.attribution import METHODS

    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if not methods or unknown:
        raise AcdError(
            f"--methods: unknown {', '.join(map(repr, unknown)) or 'nothing given'}; "
            f"choose from {', '.join(METHODS)} (ACDC selects one circuit, it has no curve)"
        )
    return methods


def _method_curve(args, model, graph, batch, method: str, metric: str, main_rank: bool):
    """One method's edge scores (node scores with --level node, positional edge scores with
    --positions), then the CPR and CMD of the circuits they rank: (CPR area, CMD distance, the
    faithfulness curve). Rank 0 says how long the evaluation takes."""
    from acd.attribution import attribute, node_scores
    from acd.curves import CURVE_PERCENTS, cmd, cpr

    same: dict[str, Any] = dict(metric=metric, ablation=args.ablation, batch_size=args.batch_size)
    if args.positions:
        return _positional_curve(model, graph, batch, method, same, main_rank)
    score = node_scores if args.level == "node" else attribute
    scores = score(model, graph, batch, method, **same, progress=main_rank)

    def areas():
        area, _ = cpr(model, graph, batch, scores, **same)
        distance, curve = cmd(model, graph, batch, scores, **same)
        return area, distance, curve

    return _timed(f"{method}: evaluating 2 x {len(CURVE_PERCENTS)} circuits", main_rank, areas)


def _positional_curve(model, graph, batch, method: str, same: dict, main_rank: bool):
    """``_method_curve`` over positional edges: CPR ranks by -score (most helpful first, as
    ``acd.curves.cpr``), CMD by |score|."""
    from acd.curves import CURVE_PERCENTS
    from acd.positional import PositionalGraph, positional_faithfulness_curve, positional_scores

    pgraph = PositionalGraph.from_batch(graph, batch)
    scores = positional_scores(model, pgraph, batch, method, **same, progress=main_rank)

    def areas():
        signed = positional_faithfulness_curve(
            model, pgraph, batch, -scores, absolute=False, **same
        )
        curve = positional_faithfulness_curve(model, pgraph, batch, scores, absolute=True, **same)
        return signed.area(), curve.area_from_one(), curve

    what = f"{method}: evaluating 2 x {len(CURVE_PERCENTS)} positional circuits"
    return _timed(what, main_rank, areas)


def _timed(what: str, main_rank: bool, evaluate):
    """``evaluate()``, with "<what> ... N s" printed on rank 0 around it: the curve circuits
    are evaluated without a progress bar, so say what is running and how long it took."""
    if main_rank:
        print(f"{what} ...", end="", flush=True)
    start = time.perf_counter()
    result = evaluate()
    if main_rank:
        print(f" {time.perf_counter() - start:.1f} s")
    return result


def _points_table(curves: dict, methods: list[str], unit: str = "edges") -> list[tuple[str, ...]]:
    """Rows of the faithfulness of each method's curve at each point, headed by the edges (or
    nodes) kept."""
    header = (unit,) + tuple(methods)
    first = curves[methods[0]]
    return [header] + [
        (f"{n:,} ({p:g} %)",) + tuple(f"{curves[m].faithfulness[i]:.3f}" for m in methods)
        for i, (p, n) in enumerate(zip(first.percents, first.n_edges))
    ]
