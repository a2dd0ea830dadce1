"""The `acd` command line: a thin layer over the Python API.

Every user mistake ends as one line on stderr (``acd: error: ...``) and exit code 2; nothing
the user typed wrong produces a traceback. Ctrl-C (and SIGTERM) end with exit code 130 and no
half-written file (every write is atomic, acd/atomic.py).

Under ``torchrun`` the commands that run the model join the process group
(acd.distributed.init_from_env), split the prompts over the processes, and only rank 0 prints
and writes files.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import time
import warnings
from pathlib import Path

from acd.errors import AcdError, AcdWarning
from acd.preflight import (
    check_memory,
    check_out_dir,
    check_out_file,
    check_out_stem,
    prompt_tokens,
)
from acd.threads import apply_threads, resolve_threads

EXAMPLES = {
    "models": "example: acd models",
    "tasks": "example: acd tasks",
    "check-model": "example: acd check-model toy --prompts 500",
    "discover": (
        "examples:\n"
        "  acd discover ioi               # embedded model, EAP-IG: out/toy/ioi/eap-ig/\n"
        "  acd discover ioi --method eap-ig --edges 30 --out out/ioi\n"
        "  acd discover induction --method acdc --tau 0.01\n"
        "  acd discover greater-than --method hybrid --candidates 100 --tau 0.005\n"
        "  acd discover my_task.toml --model /path/to/hf_model --device cuda --dtype bfloat16"
    ),
    "evaluate": (
        "examples:\n"
        "  acd evaluate graphs/toy/ioi/eap-ig/circuit.json\n"
        "  acd evaluate circuit.json --prompts 500 --seed 1 --ablation mean\n"
        "  acd evaluate eapig_graph.json --task ioi --model gpt2   # an EAP-IG / MIB graph file"
    ),
    "render": (
        "examples:\n"
        "  acd render graphs/toy/ioi/eap-ig/circuit.json             # -> circuit.svg beside it\n"
        "  acd render circuit.json --format png --format pdf --out figures/ioi"
    ),
    "compare": (
        "examples:\n"
        "  acd compare out/toy/ioi/eap/circuit.json graphs/toy/ioi/eap-ig/circuit.json\n"
        "  acd compare found.json graphs/reference/gpt2-small/ioi.json"
    ),
    "curve": (
        "examples:\n"
        "  acd curve ioi                   # eap, eap-ig, exact -> ioi_curve.png, ioi_curve.svg\n"
        "  acd curve greater-than --methods eap,eap-ig --prompts 50 --out figures/gt"
    ),
}


def cmd_models(args: argparse.Namespace) -> int:
    from acd.models import list_models

    infos = list_models()
    if not infos:
        print("no models available offline")
        return 0
    rows = [("name", "source", "layers", "heads", "d_model", "params", "path")]
    for m in infos:
        rows.append(
            (
                m.name,
                m.source,
                _text(m.n_layers),
                _text(m.n_heads),
                _text(m.d_model),
                _text(m.n_params),
                str(m.path),
            )
        )
    print(_table(rows))
    print("\nA local Hugging Face model directory works wherever a name does: acd check-model DIR")
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    from acd.tasks import list_tasks

    rows = [("name", "kind", "metric", "description")]
    rows += [(t.name, t.kind, t.metric, t.description) for t in list_tasks()]
    print(_table(rows))
    print("\nYour own task: a .toml, .csv or .jsonl file; see docs/tasks.md")
    return 0


def cmd_check_model(args: argparse.Namespace) -> int:
    from acd.models import load_model
    from acd.models.quality import adapter_runners, format_figures, role_figures, task_figures
    from acd.models.train_toy import TRAIN_SEED_BASE
    from acd.roles import adapter_patterns

    if args.seed >= TRAIN_SEED_BASE:
        raise AcdError(
            f"--seed {args.seed}: seeds from {TRAIN_SEED_BASE} on are used for training; "
            "held-out prompts need a smaller seed"
        )
    start = time.perf_counter()
    _quiet_transformers()
    _check_model(args.model, args.device)
    model = load_model(args.model, device=args.device)
    spec = model.spec
    print(
        f"{model.name}: {spec.n_layers} layers x {spec.n_heads} heads, d_model {spec.d_model}, "
        f"{model.n_params:,} parameters ({model.source}: {model.path})"
    )
    print(f"{args.prompts} held-out prompts per task (seed {args.seed})\n")
    figures = task_figures(
        *adapter_runners(model), model.tokenizer, n_prompts=args.prompts, seed=args.seed
    )
    # Head roles are measured once: their figures close the list, their table follows it.
    roles, role_table = role_figures(
        adapter_patterns(model), model.tokenizer, args.prompts, args.seed
    )
    figures += roles
    print(format_figures(figures))
    print("\nHead roles (mean attention; docs/models.md defines each score)")
    print(role_table)
    print(f"\n{time.perf_counter() - start:.1f} s")
    return 0 if all(f.met is not False for f in figures) else 1


def cmd_discover(args: argparse.Namespace) -> int:
    from acd.discover import discover
    from acd.distributed import init_from_env, is_main
    from acd.tasks import load_task

    init_from_env()
    _quiet_transformers()
    main_rank = is_main()
    # Everything that can be checked without the model is checked before it loads.
    options = _discover_options(args)
    task = load_task(args.task)
    out = Path(args.out) if args.out else default_out_dir(args.model, task.name, args.method)
    check_out_dir(out)
    if args.checkpoint:
        check_out_file(args.checkpoint, "--checkpoint")
    config = _check_model(args.model, args.device)
    options["prompts"], sample = _discovery_prompts(task, args.prompts, args.seed)
    _check_graph_size(config, args)
    check_memory(options["prompts"], prompt_tokens(sample), config, args.batch_size, args.device)
    model = _load_model_verbose(args.model, args.device, args.dtype, quiet=not main_rank)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", AcdWarning)
        circuit = discover(task, model, **options)
    if not main_rank:
        return 0
    _print_warnings(caught)
    saved = _save_or_rescue(circuit, out, _formats(args.format))
    print()
    print(circuit.summary_markdown().rstrip())
    print()
    print(f"wrote {len(saved.paths)} files to {out}/: " + ", ".join(p.name for p in saved.paths))
    diagrams = [p for p in saved.paths if p.suffix in (".svg", ".png", ".pdf")]
    if diagrams:
        print(f"diagram: {diagrams[0]}")
    if saved.note:
        print(saved.note)
    return 0


# Options that only some methods read; given with another method they are refused, not ignored.
_METHOD_OPTIONS = {
    "--edges": ("edges", ("eap", "eap-ig", "exact"), "--method eap, eap-ig or exact"),
    "--threshold": ("threshold", ("eap", "eap-ig", "exact"), "--method eap, eap-ig or exact"),
    "--selection": ("selection", ("eap", "eap-ig", "exact"), "--method eap, eap-ig or exact"),
    "--tau": ("tau", ("acdc", "hybrid"), "--method acdc or hybrid"),
    "--candidates": ("candidates", ("hybrid",), "--method hybrid"),
    "--scoring": ("scoring", ("hybrid",), "--method hybrid"),
    "--checkpoint": ("checkpoint", ("acdc", "hybrid"), "--method acdc or hybrid"),
    "--rows-per-forward": ("rows_per_forward", ("acdc", "hybrid"), "--method acdc or hybrid"),
}


def _discover_options(args: argparse.Namespace) -> dict:
    """discover()'s keywords from the command line, refusing (AcdError) every option the chosen
    method does not read and every combination that cannot work (acd.discover.check_arguments),
    all before anything is loaded."""
    from acd.discover import check_arguments
    from acd.distributed import is_main

    method = args.method
    for flag, (attr, methods, where) in _METHOD_OPTIONS.items():
        if getattr(args, attr) is not None and method not in methods:
            raise AcdError(f"{flag} applies to {where}, not --method {method}")
    scoring = args.scoring or "eap-ig"
    uses_ig = method == "eap-ig" or (method == "hybrid" and scoring == "eap-ig")
    if args.ig_steps is not None and not uses_ig:
        raise AcdError(
            f"--ig-steps applies to --method eap-ig (or hybrid with --scoring eap-ig), "
            f"not --method {method}" + (f" --scoring {scoring}" if method == "hybrid" else "")
        )
    if args.threshold is not None and args.selection is not None:
        raise AcdError("--selection picks --edges edges; --threshold keeps all above it: not both")
    if method in ("acdc", "hybrid") and args.tau is None:
        raise AcdError(f"--method {method} needs --tau (e.g. --tau 0.01)")
    if method == "hybrid" and args.candidates is None:
        raise AcdError("--method hybrid needs --candidates K (edges passed to ACDC)")
    options: dict = dict(
        method=method,
        seed=args.seed,
        metric=args.metric,
        ablation=args.ablation,
        batch_size=args.batch_size,
        prune=not args.no_prune,
        progress=is_main() and not args.quiet,
        force=args.force,
    )
    if method in ("acdc", "hybrid"):
        options.update(tau=args.tau, checkpoint=args.checkpoint)
        if args.rows_per_forward is not None:
            options["rows_per_forward"] = args.rows_per_forward
        if method == "hybrid":
            options.update(candidates=args.candidates, scoring=scoring)
    elif args.threshold is not None:
        options.update(selection="threshold", threshold=args.threshold)
    else:
        options.update(selection=args.selection or "topn", edges=args.edges)
    if uses_ig and args.ig_steps is not None:
        options["ig_steps"] = args.ig_steps
    checked = ("selection", "threshold", "tau", "candidates", "scoring", "metric", "ablation")
    check_arguments(method, **{k: options[k] for k in checked if k in options})
    return options


def _discovery_prompts(task, requested: int | None, seed: int) -> tuple[int, list]:
    """The number of discovery prompts (checked against a pair file's discovery rows), and a
    few of them to estimate their length."""
    from acd.heldout import available_prompts, discovery_split, resolve_prompts
    from acd.preflight import LENGTH_SAMPLE

    drawn_from, split = discovery_split(task, seed)
    held = "" if split.generated or split.in_sample else f" ({split.evaluation} more held out)"
    size = available_prompts(drawn_from)
    n = resolve_prompts(requested, size, task.name, f"discovery rows{held}")
    return n, drawn_from.prompt_pairs(min(n, LENGTH_SAMPLE), seed)


def _check_model(name: str, device: str | None) -> dict | None:
    """The device and the model's name or path, checked without loading; the model's
    config.json when it is on disk (for the size checks), else None."""
    from acd.models import check_device, model_config

    check_device(device)
    return model_config(name)


def _check_graph_size(config: dict | None, args: argparse.Namespace) -> None:
    """--edges and --candidates against the graph the model's config implies."""
    from acd.graph import ComputeGraph

    if config is None:
        return
    try:
        n_edges = ComputeGraph.from_config(config).n_edges
    except (ValueError, TypeError, KeyError):
        return  # an unusual config: discover checks against the loaded model's graph
    if args.edges is not None and args.edges > n_edges:
        raise AcdError(
            f"cannot keep {args.edges} edges: the graph has {n_edges} (choose 0..{n_edges})"
        )
    if args.candidates is not None and args.candidates > n_edges:
        raise AcdError(f"--candidates {args.candidates}: the graph has only {n_edges} edges")


def _save_or_rescue(circuit, out: Path, formats: tuple[str, ...]):
    """Save the run into ``out``; if that fails after all (the folder was checked before the
    work, but a disk can fill up or permissions change), save it into a new temporary folder
    instead and say where, so that a finished result is never lost."""
    import tempfile

    try:
        return circuit.save(out, formats=formats)
    except OSError as err:
        rescue = Path(tempfile.mkdtemp(prefix="acd-rescued-"))
        circuit.save(rescue, formats=formats)
        raise AcdError(
            f"could not write into {out} ({err.strerror or err}); the circuit was saved to "
            f"{rescue}/ instead"
        ) from None


def _print_warnings(caught: list) -> None:
    """acd's warnings as one ``warning:`` line each; any other warning as Python shows it."""
    for w in caught:
        if issubclass(w.category, AcdWarning):
            print(f"warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def default_out_dir(model: str, task: str, method: str) -> Path:
    """out/<model>/<task>/<method>/ under the working directory (names made path-safe): the
    gallery's layout, outside the gallery, so a run in a checkout never overwrites it."""
    return Path("out", *(_path_safe(p) for p in (model, task, method)))


def _path_safe(name: str) -> str:
    # A model given as a path is named by its folder; hub names keep their owner ("a/b" -> a--b).
    name = Path(name).name if ("/" in name and Path(name).exists()) else name
    return re.sub(r"[^A-Za-z0-9._-]+", "--", name).strip("-") or "model"


def cmd_evaluate(args: argparse.Namespace) -> int:
    from acd.distributed import init_from_env, is_main
    from acd.evaluate import evaluate_circuit
    from acd.graph import ComputeGraph
    from acd.heldout import held_out, resolve_prompts
    from acd.preflight import LENGTH_SAMPLE

    init_from_env()
    _quiet_transformers()
    circuit = _load_any_circuit(args.circuit)
    task, same = _evaluation_task(circuit, args)
    if not circuit.task and circuit.task_source is None:
        same = True  # the file records no task (EAP-IG's): held_out says overlap is unchecked
    model_name = args.model or circuit.model
    if not model_name:
        raise AcdError(f"{args.circuit} names no model; give --model")
    config = _check_model(model_name, args.device)
    recorded = circuit.params.get("prompts")
    source = held_out(
        task,
        circuit.prompt_split,
        same=same,
        seed=circuit.seed,
        discovery_prompts=recorded if isinstance(recorded, int) else None,
    )
    what = "rows" if source.in_sample or not same else "held-out rows for evaluation"
    n = resolve_prompts(args.prompts, source.size, task.name, what)
    sample = source.task.prompt_pairs(min(n, LENGTH_SAMPLE), args.seed)
    check_memory(n, prompt_tokens(sample), config, args.batch_size, args.device)
    pairs = source.draw(n, args.seed)
    model = _load_model_verbose(model_name, args.device, args.dtype, quiet=not is_main())
    graph = ComputeGraph.from_model(model)
    if (graph.n_src, graph.n_dst) != (circuit.graph.n_src, circuit.graph.n_dst) or not bool(
        (graph.valid == circuit.graph.valid).all()
    ):
        raise AcdError(
            f"the circuit's graph ({circuit.graph.n_src} x {circuit.graph.n_dst}) is not the "
            f"graph of {model_name!r} ({graph.n_src} x {graph.n_dst}); evaluate it on its model"
        )
    _warn_if_other_weights(circuit, model)
    batch = source.task.encode(pairs, model.tokenizer).to(model.device)
    # The metric the circuit was evaluated with, not an ACDC search's (docs/formats.md).
    metric = args.metric or circuit.evaluation_metric or task.metric
    if metric == "task":
        metric = task.metric
    ablation = args.ablation or circuit.params.get("ablation") or "corrupted"
    start = time.perf_counter()
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
    s = evaluation.summary()
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
    print(_table(rows))
    print(f"\n{time.perf_counter() - start:.1f} s")
    return 0


def _evaluation_task(circuit, args: argparse.Namespace):
    """The task to evaluate on, and whether it is the one the circuit was found on.

    ``--task`` decides when given. Otherwise the circuit's recorded source: a shipped task by
    name, a task file from its path, refused when the file is missing or its sha256 changed
    (evaluating a changed file as if it were the same would be a silent wrong result). A file
    of an older acd records only the task's name."""
    from acd.errors import TaskError
    from acd.heldout import file_sha256, same_task
    from acd.tasks import load_task

    if args.task:
        task = load_task(args.task)
        return task, same_task(circuit.task_source, circuit.task, task)
    recorded = circuit.task_source
    if recorded is None:
        if not circuit.task:
            raise AcdError(f"{args.circuit} names no task; give --task")
        try:
            return load_task(circuit.task), True
        except TaskError:
            raise AcdError(
                f"{args.circuit} records only its task's name, {circuit.task!r}, which is not a "
                "shipped task; give the task file with --task FILE"
            ) from None
    if recorded.kind == "builtin":
        return load_task(recorded.name), True
    path = Path(recorded.path)
    if not path.is_file():
        raise AcdError(
            f"{args.circuit} was found on the task file {path}, which is missing; give the "
            "task with --task FILE"
        )
    now = file_sha256(path)
    if recorded.sha256 is not None and now != recorded.sha256:
        raise AcdError(
            f"the task file {path} changed since {args.circuit} was found on it (sha256 "
            f"{now[:12]}..., recorded {recorded.sha256[:12]}...); pass --task {path} to "
            "evaluate on it as it is now"
        )
    return load_task(path), True


def cmd_render(args: argparse.Namespace) -> int:
    from acd.diagram import write_diagram

    circuit = _load_any_circuit(args.circuit)
    stem = Path(args.out) if args.out else Path(args.circuit).with_suffix("")
    check_out_stem(stem)
    result = write_diagram(circuit, stem, _formats(args.format), max_edges=args.max_edges)
    print("wrote " + ", ".join(str(p) for p in result.paths))
    if result.message:
        print(result.message)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from acd.comparison import compare

    a, b = _load_any_circuit(args.a), _load_any_circuit(args.b)
    if (a.graph.n_src, a.graph.n_dst) != (b.graph.n_src, b.graph.n_dst) or not bool(
        (a.graph.valid == b.graph.valid).all()
    ):
        raise AcdError(
            f"{args.a} and {args.b} are circuits of different graphs "
            f"({a.graph.n_src} x {a.graph.n_dst} vs {b.graph.n_src} x {b.graph.n_dst})"
        )
    c = compare(a.graph, a.mask, b.mask)
    both = int((a.mask & b.mask).sum())
    union = int((a.mask | b.mask).sum())
    only_a = a.graph.edge_names(a.mask & ~b.mask)
    only_b = a.graph.edge_names(b.mask & ~a.mask)
    print(f"A: {args.a} ({a.n_edges:,} edges)\nB: {args.b} ({b.n_edges:,} edges)\n")
    rows = [("figure", "edges", "nodes")]
    rows += [
        ("precision (of A against B)", _fmt(c.edge_precision), _fmt(c.node_precision)),
        ("recall (of B by A)", _fmt(c.edge_recall), _fmt(c.node_recall)),
        ("F1", _fmt(c.edge_f1), _fmt(c.node_f1)),
        ("Jaccard |A & B| / |A | B|", _fmt(both / union if union else 1.0), ""),
        ("in both", f"{both:,}", ""),
    ]
    if a.mask.any() and a.scores.abs().sum() > 0:
        ranked = compare(a.graph, a.scores, b.mask)
        rows.append(
            ("ROC AUC of A's scores for B", _fmt(ranked.edge_roc_auc), _fmt(ranked.node_roc_auc))
        )
    print(_table(rows))
    for label, edges in [("only in A", only_a), ("only in B", only_b)]:
        print(f"\n{label}: {len(edges):,} edges")
        for src, dst in edges[: args.list]:
            print(f"  {src} -> {dst}")
        if len(edges) > args.list:
            print(f"  ... and {len(edges) - args.list:,} more (--list N shows more)")
    return 0


def cmd_curve(args: argparse.Namespace) -> int:
    from acd.attribution import METHODS, attribute
    from acd.curves import CURVE_PERCENTS, cmd, cpr, plot_faithfulness
    from acd.distributed import init_from_env, is_main
    from acd.graph import ComputeGraph
    from acd.heldout import available_prompts, resolve_prompts
    from acd.preflight import LENGTH_SAMPLE
    from acd.tasks import load_task

    init_from_env()
    _quiet_transformers()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if not methods or unknown:
        raise AcdError(
            f"--methods: unknown {', '.join(map(repr, unknown)) or 'nothing given'}; "
            f"choose from {', '.join(METHODS)} (ACDC selects one circuit, it has no curve)"
        )
    task = load_task(args.task)
    stem = Path(args.out) if args.out else Path(f"{_path_safe(task.name)}_curve")
    check_out_stem(stem)
    config = _check_model(args.model, args.device)
    # A curve scores and evaluates the same prompts (as MIB does): all of a pair file's rows.
    n = resolve_prompts(args.prompts, available_prompts(task), task.name, "rows")
    sample = task.prompt_pairs(min(n, LENGTH_SAMPLE), args.seed)
    check_memory(n, prompt_tokens(sample), config, args.batch_size, args.device)
    main_rank = is_main()
    model = _load_model_verbose(args.model, args.device, args.dtype, quiet=not main_rank)
    graph = ComputeGraph.from_model(model)
    batch = task.make_batch(model.tokenizer, n, args.seed).to(model.device)
    metric = args.metric or task.metric
    curves, rows = {}, [("method", "CPR (higher better)", "CMD (lower better)", "seconds")]
    for method in methods:
        start = time.perf_counter()
        scores = attribute(
            model,
            graph,
            batch,
            method,
            metric=metric,
            ablation=args.ablation,
            batch_size=args.batch_size,
            progress=main_rank,
        )
        if main_rank:  # the 2 x 10 curve circuits are evaluated without a bar: say so
            n_points = len(CURVE_PERCENTS)
            print(f"{method}: evaluating 2 x {n_points} circuits ...", end="", flush=True)
        evaluated = time.perf_counter()
        area, _ = cpr(
            model,
            graph,
            batch,
            scores,
            metric=metric,
            ablation=args.ablation,
            batch_size=args.batch_size,
        )
        distance, curve = cmd(
            model,
            graph,
            batch,
            scores,
            metric=metric,
            ablation=args.ablation,
            batch_size=args.batch_size,
        )
        curves[method] = curve
        if main_rank:
            print(f" {time.perf_counter() - evaluated:.1f} s")
        rows.append(
            (method, f"{area:.4f}", f"{distance:.4f}", f"{time.perf_counter() - start:.1f}")
        )
    if not main_rank:
        return 0
    title = f"{task.name} on {model.name}: faithfulness by edges kept (|score| order)"
    paths = plot_faithfulness(curves, stem, title=title)
    print(_table(rows))
    print("\nfaithfulness at each point (edges kept by |score|):")
    header = ("edges",) + tuple(methods)
    first = curves[methods[0]]
    table = [header] + [
        (f"{n:,} ({p:g} %)",) + tuple(f"{curves[m].faithfulness[i]:.3f}" for m in methods)
        for i, (p, n) in enumerate(zip(first.percents, first.n_edges))
    ]
    print(_table(table))
    print("\nwrote " + ", ".join(str(p) for p in paths))
    return 0


def _load_model_verbose(name: str, device, dtype, *, quiet: bool = False):
    from acd.models import load_model

    start = time.perf_counter()
    if not quiet:
        print(f"loading model {name} ...", end="", flush=True)
    model = load_model(name, device=device, dtype=dtype)
    if not quiet:
        print(
            f" {model.spec.n_layers} layers x {model.spec.n_heads} heads on {model.device} "
            f"({time.perf_counter() - start:.1f} s)"
        )
    return model


def _load_any_circuit(path: str):
    """A circuit.json of acd, or an EAP-IG / MIB graph JSON, checked against its schema."""
    from acd.export import load_any_circuit

    if not Path(path).is_file():
        raise AcdError(f"no circuit file at {path}")
    return load_any_circuit(path)


def _warn_if_other_weights(circuit, model) -> None:
    from acd.models import weights_sha256

    if circuit.model_sha256 and weights_sha256(model) != circuit.model_sha256:
        print(
            f"warning: {model.name}'s weights differ from those the circuit was found on "
            f"(sha256 {circuit.model_sha256[:12]}...)",
            file=sys.stderr,
        )


def _formats(requested: list[str] | None) -> tuple[str, ...]:
    """The diagram formats of repeated --format options, in order, once each; svg if none."""
    return tuple(dict.fromkeys(requested or ["svg"]))


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _quiet_transformers() -> None:
    """No per-load "Loading weights" bar: the command prints its own, shorter account.

    The command line owns its process, so switching transformers' bars off here is harmless;
    the library itself leaves them alone.
    """
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _text(value: object) -> str:
    return "-" if value is None else f"{value:,}" if isinstance(value, int) else str(value)


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows
    )


class _Parser(argparse.ArgumentParser):
    """argparse with its mistakes in acd's form: one ``acd: error:`` line, exit code 2 (instead
    of a usage block and a second line in argparse's own form)."""

    def error(self, message: str):
        self.exit(2, f"acd: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="acd",
        description="Automated circuit discovery for transformer language models.",
        epilog="Run 'acd COMMAND --help' for a command's options and an example.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help_text: str, func) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=EXAMPLES[name],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(func=func)
        return p

    add("models", "List the models available offline (embedded and cached).", cmd_models)
    add("tasks", "List the shipped tasks.", cmd_tasks)
    p = add(
        "check-model",
        "Measure how well a model does the shipped tasks, on held-out prompts.",
        cmd_check_model,
    )
    p.add_argument("model", nargs="?", default="toy", help="model name or path (default: toy)")
    p.add_argument("--prompts", type=_positive_int, default=500, help="prompts per task")
    p.add_argument("--seed", type=int, default=0, help="prompt seed (held out from training)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: best)")
    _threads_option(p)

    p = add("discover", "Find a task's circuit in a model and write its files.", cmd_discover)
    p.add_argument("task", help="shipped task name (acd tasks) or a .toml/.csv/.jsonl file")
    _model_options(p)
    p.add_argument(
        "--method",
        default="eap-ig",
        choices=["eap", "eap-ig", "exact", "acdc", "hybrid"],
        help="edge scores (eap, eap-ig, exact) then top-n selection, or a search (acdc; "
        "hybrid = eap/eap-ig scores, then ACDC over the best --candidates). Default: eap-ig",
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument(
        "--edges",
        type=_nonnegative_int,
        help="edges to keep (default: 5 %% of the graph's edges, at most 200)",
    )
    size.add_argument("--threshold", type=float, help="keep every edge with |score| >= T")
    p.add_argument(
        "--selection",
        choices=["topn", "greedy"],
        default=None,
        help="with --edges: the best N by |score| (topn, the default), or grown from the "
        "logits (greedy)",
    )
    p.add_argument(
        "--tau",
        type=float,
        help="acdc/hybrid: remove an edge if the metric changes by less than this",
    )
    p.add_argument("--candidates", type=_positive_int, help="hybrid: edges passed to ACDC")
    p.add_argument(
        "--rows-per-forward",
        type=_positive_int,
        default=None,
        help="acdc/hybrid: (circuit, prompt) rows per forward (64; raise it on a GPU)",
    )
    p.add_argument(
        "--scoring",
        choices=["eap", "eap-ig"],
        default=None,
        help="hybrid: how candidates are scored (eap-ig)",
    )
    p.add_argument(
        "--checkpoint",
        help="acdc/hybrid: checkpoint file; an interrupted run resumes from it with the "
        "identical result (same model, dtype and arguments only); removed when the run ends",
    )
    _prompt_options(p)
    p.add_argument(
        "--ig-steps",
        type=_positive_int,
        default=None,
        help="eap-ig (and hybrid's eap-ig scoring): integration steps (5)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="score even when the model's metric does not separate clean from corrupted "
        "prompts (the sanity gate, docs/tasks.md); a warning instead of an error",
    )
    p.add_argument(
        "--no-prune",
        action="store_true",
        help="keep selected edges that lie on no input -> logits path",
    )
    p.add_argument("--out", help="output folder (default: out/<model>/<task>/<method>/)")
    p.add_argument(
        "--format",
        action="append",
        choices=["svg", "png", "pdf"],
        default=None,
        help="diagram formats besides circuit.dot (default: svg; repeat for more)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = add("evaluate", "Measure a saved circuit's faithfulness on fresh prompts.", cmd_evaluate)
    p.add_argument("circuit", help="circuit.json (acd) or an EAP-IG / MIB graph JSON")
    p.add_argument("--task", help="task (default: the circuit's)")
    _model_options(p, default=None, help_default="the circuit's")
    _prompt_options(p, evaluate=True)

    p = add("render", "Draw a saved circuit with Graphviz.", cmd_render)
    p.add_argument("circuit", help="circuit.json (acd) or an EAP-IG / MIB graph JSON")
    p.add_argument(
        "--format",
        action="append",
        choices=["svg", "png", "pdf"],
        help="output format (default svg; repeat for more); the .dot is always written",
    )
    p.add_argument("--out", help="path stem of the outputs (default: beside the circuit file)")
    p.add_argument(
        "--max-edges",
        type=_positive_int,
        default=300,
        help="draw at most this many edges, the largest |score| (300)",
    )

    p = add("compare", "Compare two circuits edge by edge.", cmd_compare)
    p.add_argument("a", help="circuit A (circuit.json or EAP-IG JSON)")
    p.add_argument("b", help="circuit B, e.g. a reference circuit from graphs/reference/")
    p.add_argument("--list", type=int, default=20, help="edges listed per side (20)")

    p = add("curve", "Chart faithfulness against circuit size for scoring methods.", cmd_curve)
    p.add_argument("task", help="shipped task name or a task file")
    p.add_argument(
        "--methods",
        default="eap,eap-ig,exact",
        help="comma-separated scoring methods (eap,eap-ig,exact)",
    )
    _model_options(p)
    _prompt_options(p, rows="rows")
    p.add_argument("--out", help="path stem of the chart (default: <task>_curve)")
    return parser


def _model_options(
    p: argparse.ArgumentParser, *, default: str | None = "toy", help_default: str = "toy"
) -> None:
    p.add_argument(
        "--model",
        default=default,
        help=f"model name, local HF directory or hub name (default: {help_default})",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: best)")
    p.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "float16", "bfloat16", "float64"],
        help="model dtype (default float32)",
    )
    _threads_option(p)


def _threads_option(p: argparse.ArgumentParser) -> None:
    # Parsed as text and checked by resolve_threads, so that a bad value is one "acd: error:"
    # line, like a bad ACD_THREADS / OMP_NUM_THREADS.
    p.add_argument(
        "--threads",
        metavar="N",
        default=None,
        help="CPU threads for torch (default: $ACD_THREADS, else $OMP_NUM_THREADS, else the "
        "physical cores this process may use, divided by $LOCAL_WORLD_SIZE under torchrun); "
        "on a shared machine 1 is often much faster",
    )


def _prompt_options(
    p: argparse.ArgumentParser, *, evaluate: bool = False, rows: str = "discovery rows"
) -> None:
    p.add_argument(
        "--prompts",
        type=_positive_int,
        default=None,
        help="prompt pairs (100, or all of a smaller pair file's "
        + ("held-out rows)" if evaluate else f"{rows})"),
    )
    p.add_argument(
        "--seed",
        type=int,
        default=1 if evaluate else 0,
        help=f"prompt seed ({1 if evaluate else 0}"
        + ("; whatever the seed, no prompt discover used is drawn)" if evaluate else ")"),
    )
    p.add_argument(
        "--metric",
        choices=["logit_diff", "prob_diff", "logprob", "kl"],
        help="metric (default: the one the circuit was evaluated with)"
        if evaluate
        else "metric (default: the task's; the search's is kl for acdc/hybrid)",
    )
    p.add_argument(
        "--ablation",
        choices=["corrupted", "zero", "mean"],
        default=None if evaluate else "corrupted",
        help="what removed edges carry (default: "
        + ("the circuit's)" if evaluate else "corrupted)"),
    )
    p.add_argument("--batch-size", type=_positive_int, help="prompts per forward (default: all)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # SIGTERM (a job scheduler, `kill`) unwinds like Ctrl-C, so atomic writes clean up.
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    restore_threads = None
    try:
        if hasattr(args, "threads"):  # a command that runs a model
            restore_threads = _set_threads(args)
        return args.func(args)
    except AcdError as err:
        print(f"acd: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("acd: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        if restore_threads is not None:  # an in-process caller keeps its own count
            import torch

            torch.set_num_threads(restore_threads)


def _set_threads(args: argparse.Namespace) -> int:
    """Resolve and apply the thread count before the model loads (acd/threads.py has the rule);
    print it as the first line of the run header (rank 0 only). Returns torch's previous count."""
    import torch

    choice = resolve_threads(args.threads)
    before = torch.get_num_threads()
    apply_threads(choice.n)
    args.thread_choice = choice
    if os.environ.get("RANK", "0").strip() in ("", "0"):
        print(choice.header(), flush=True)
    return before


def _raise_keyboard_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
