"""``acd evaluate``: measure a saved circuit's faithfulness on prompts discover did not use."""

from __future__ import annotations

import argparse
import sys
import time

from acd.circuit_files import load_circuit_file
from acd.cli.common import load_command_model, quiet_transformers, table
from acd.preflight import check_memory, prompt_tokens
from acd.reevaluation import (
    check_model_graph,
    evaluation_ablation,
    evaluation_metric,
    evaluation_model,
    evaluation_prompts,
    evaluation_task,
    weights_differ,
)
from acd.run_checks import check_model


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Check the circuit, task, model and prompts, load the model, evaluate, print (rank 0)."""
    from acd.distributed import init_from_env, is_main
    from acd.evaluate import evaluate_circuit
    from acd.graph import ComputeGraph

    init_from_env()
    quiet_transformers()
    circuit = load_circuit_file(args.circuit)
    task, same = evaluation_task(circuit, args.task, args.circuit)
    model_name = evaluation_model(circuit, args.model, args.circuit)
    config = check_model(model_name, args.device)
    source, n, sample = evaluation_prompts(circuit, task, same, args.prompts, args.seed)
    check_memory(n, prompt_tokens(sample), config, args.batch_size, args.device)
    pairs = source.draw(n, args.seed)
    model = load_command_model(model_name, args.device, args.dtype, quiet=not is_main())
    graph = ComputeGraph.from_model(model)
    check_model_graph(circuit, graph, model_name)
    if weights_differ(circuit, model):
        print(
            f"warning: {model.name}'s weights differ from those the circuit was found on "
            f"(sha256 {circuit.model_sha256[:12]}...)",
            file=sys.stderr,
        )
    batch = source.task.encode(pairs, model.tokenizer).to(model.device)
    start = time.perf_counter()
    metric = evaluation_metric(args.metric, circuit, task)
    ablation = evaluation_ablation(args.ablation, circuit)
    if circuit.positional is not None:  # patched per (edge, span), as it was found
        from acd.positional.evaluate import evaluate_positional_circuit

        evaluation = evaluate_positional_circuit(
            model,
            circuit.positional,
            batch,
            metric=metric,
            ablation=ablation,
            batch_size=args.batch_size,
        )
    else:
        evaluation = evaluate_circuit(
            model,
            graph,
            batch,
            circuit.mask,
            metric=metric,
            ablation=ablation,
            batch_size=args.batch_size,
        )
    if not is_main():
        return 0
    _print_evaluation(args, circuit, graph, task, model, source, evaluation.summary())
    print(f"\n{time.perf_counter() - start:.1f} s")
    return 0


def _print_evaluation(args, circuit, graph, task, model, source, s: dict) -> None:
    """A header line (what was evaluated on what), the prompts' note, and the figures."""
    print(
        f"{args.circuit}: {circuit.n_edges:,} of {graph.n_edges:,} edges, task {task.name}, "
        f"model {model.name}, {s['n_prompts']} prompts (seed {args.seed}), metric {s['metric']}, "
        f"{s['ablation']} ablation"
    )
    print(f"prompts: {source.note}")
    rows = [("figure", "value")]
    rows += [
        ("faithfulness (ratio of means)", f"{s['faithfulness']:.4f}"),
        ("per prompt: mean ± std", f"{s['faithfulness_mean']:.4f} ± {s['faithfulness_std']:.4f}"),
        ("per prompt: median", f"{s['faithfulness_median']:.4f}"),
        ("per prompt: p05 .. p95", f"{s['faithfulness_p05']:.4f} .. {s['faithfulness_p95']:.4f}"),
        ("degenerate prompts (left out)", str(s["n_degenerate"])),
        (f"{s['metric']}: circuit", f"{s['metric_circuit']:.4f}"),
        (f"{s['metric']}: full model", f"{s['metric_full']:.4f}"),
        (f"{s['metric']}: empty circuit", f"{s['metric_empty']:.4f}"),
        ("KL(full || circuit)", f"{s['kl_to_full']:.4f}"),
    ]
    print(table(rows))
