"""``acd discover``: find a task's circuit in a model and write its files.

``_discover_options`` is the one place where the parsed arguments become
``acd.discover.discover``'s keywords; everything that can be refused is refused there or in
the checks that follow it, before the model loads.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from acd.cli.common import diagram_formats, load_command_model, quiet_transformers
from acd.errors import AcdError, AcdWarning
from acd.methods import SCORING_METHODS
from acd.outputs import discover_out_dir, save_or_rescue
from acd.preflight import check_memory, check_out_dir, check_out_file, prompt_tokens
from acd.run_checks import check_graph_size, check_model, discovery_prompts


def cmd_discover(args: argparse.Namespace) -> int:
    """Check every argument, load the model, discover, save, print the summary (rank 0)."""
    from acd.distributed import init_from_env, is_main
    from acd.tasks import load_task

    init_from_env()
    quiet_transformers()
    main_rank = is_main()
    # Everything that can be checked without the model is checked before it loads.
    options = _discover_options(args)
    task = load_task(args.task)
    if args.positions:
        _check_task_spans(task, args.seed)
    folder = args.method + ("-nodes" if args.level == "node" else "")
    folder += "-positions" if args.positions else ""
    out = discover_out_dir(args.out, args.model, task.name, folder)
    check_out_dir(out)
    if args.checkpoint:
        check_out_file(args.checkpoint, "--checkpoint")
    config = check_model(args.model, args.device)
    options["prompts"], sample = discovery_prompts(task, args.prompts, args.seed)
    check_graph_size(config, args.edges, args.candidates, args.nodes)
    check_memory(options["prompts"], prompt_tokens(sample), config, args.batch_size, args.device)
    model = load_command_model(args.model, args.device, args.dtype, quiet=not main_rank)
    circuit, caught = _discover_recording_warnings(task, model, options)
    if not main_rank:
        return 0
    _print_warnings(caught)
    attention = _attention(task, model, args.seed)
    saved = save_or_rescue(circuit, out, diagram_formats(args.format), attention)
    _print_saved(circuit, saved, out)
    return 0


def _check_task_spans(task, seed: int) -> None:
    """--positions needs a task whose prompts name spans (one prompt is drawn to see)."""
    pairs = task.prompt_pairs(1, seed)
    if not pairs or not pairs[0].spans:
        raise AcdError(
            f"task {task.name!r} names no spans, so --positions has nothing to split by; "
            "give its prompts spans (docs/tasks.md, 'Spans')"
        )


# The prompts whose attention patterns circuit.html shows (attention.json).
ATTENTION_PROMPTS = 3


def _attention(task, model, seed: int) -> dict:
    """Every head's attention pattern on ATTENTION_PROMPTS of the task's prompts, for
    circuit.html (clicking a head shows it) and attention.json."""
    from acd.export.html_page import attention_examples
    from acd.heldout import available_prompts

    n = min(ATTENTION_PROMPTS, available_prompts(task) or ATTENTION_PROMPTS)
    batch = task.make_batch(model.tokenizer, n, seed=seed).to(model.device)
    return attention_examples(model, batch, n_prompts=n)


# Options that only some methods read; given with another method they are refused, not ignored.
_SCORING_WORDS = "--method " + ", ".join(SCORING_METHODS[:-1]) + " or " + SCORING_METHODS[-1]
_METHOD_OPTIONS = {
    "--edges": ("edges", SCORING_METHODS, _SCORING_WORDS),
    "--threshold": ("threshold", SCORING_METHODS, _SCORING_WORDS),
    "--nodes": ("nodes", SCORING_METHODS, _SCORING_WORDS),
    "--selection": ("selection", SCORING_METHODS, _SCORING_WORDS),
    "--tau": ("tau", ("acdc", "hybrid"), "--method acdc or hybrid"),
    "--candidates": ("candidates", ("hybrid",), "--method hybrid"),
    "--scoring": ("scoring", ("hybrid",), "--method hybrid"),
    "--checkpoint": ("checkpoint", ("acdc", "hybrid"), "--method acdc or hybrid"),
    "--rows-per-forward": ("rows_per_forward", ("acdc", "hybrid"), "--method acdc or hybrid"),
    # Only the methods whose gradients it changes (exact and acdc take none).
    "--frozen-norms": (
        "frozen_norms",
        ("eap", "eap-ig", "eap-ig-activations", "clean-corrupted", "hybrid"),
        "the gradient methods (--method eap, eap-ig, eap-ig-activations, clean-corrupted or "
        "hybrid)",
    ),
}


def _discover_options(args: argparse.Namespace) -> dict:
    """discover()'s keywords from the command line: the method and selection objects
    (acd.methods, which check their own parameters) and the RunConfig, refusing (AcdError)
    every option the chosen method does not read and every combination that cannot work, all
    before anything is loaded."""
    from acd.discover import RunConfig
    from acd.distributed import is_main
    from acd.methods import method_from_name, selection_from_name

    method = args.method
    for flag, (attr, methods, where) in _METHOD_OPTIONS.items():
        if getattr(args, attr) is not None and method not in methods:
            raise AcdError(f"{flag} applies to {where}, not --method {method}")
    scoring = args.scoring or "eap-ig"
    uses_ig = method in ("eap-ig", "eap-ig-activations") or (
        method == "hybrid" and scoring == "eap-ig"
    )
    if args.ig_steps is not None and not uses_ig:
        raise AcdError(
            f"--ig-steps applies to --method eap-ig (or hybrid with --scoring eap-ig), "
            f"not --method {method}" + (f" --scoring {scoring}" if method == "hybrid" else "")
        )
    if args.level == "node":
        if method in ("acdc", "hybrid"):
            raise AcdError(
                f"--level node applies to the scoring methods, not --method {method} "
                "(the searches are edge-level)"
            )
        if args.edges is not None:
            raise AcdError("--level node keeps nodes: give --nodes N, not --edges")
        if args.selection == "greedy":
            raise AcdError("--selection greedy grows edges; at --level node choose topn")
    elif args.nodes is not None:
        raise AcdError("--nodes applies to --level node (give --edges at edge level)")
    if args.positions:
        if method not in ("eap", "eap-ig", "exact"):
            raise AcdError(
                f"--positions applies to --method eap, eap-ig or exact, not --method {method}"
            )
        if args.level == "node":
            raise AcdError("--positions keeps positional edges: not with --level node")
        if args.selection == "greedy":
            raise AcdError("--selection greedy has no positional form; choose topn")
    if args.threshold is not None and args.selection is not None:
        raise AcdError("--selection picks --edges edges; --threshold keeps all above it: not both")
    if method in ("acdc", "hybrid") and args.tau is None:
        raise AcdError(f"--method {method} needs --tau (e.g. --tau 0.01)")
    if method == "hybrid" and args.candidates is None:
        raise AcdError("--method hybrid needs --candidates K (edges passed to ACDC)")
    options: dict = dict(
        seed=args.seed,
        level=args.level,
        positions=args.positions,
        prune=not args.no_prune,
        run=RunConfig(
            metric=args.metric,
            ablation=args.ablation,
            batch_size=args.batch_size,
            progress=is_main() and not args.quiet,
            force=args.force,
            trust=not args.no_trust,
            roles=not args.no_roles,
        ),
    )
    options["method"] = method_from_name(
        method,
        ig_steps=args.ig_steps,
        tau=args.tau,
        # --metric is the search's metric too (default kl) and the evaluation's.
        metric=args.metric,
        candidates=args.candidates,
        scoring=scoring,
        checkpoint=args.checkpoint,
        rows_per_forward=args.rows_per_forward,
        frozen_norms=args.frozen_norms,
    )
    if method not in ("acdc", "hybrid"):
        if args.threshold is not None:
            options["select"] = selection_from_name("threshold", threshold=args.threshold)
        else:
            size = args.nodes if args.level == "node" else args.edges
            options["select"] = selection_from_name(args.selection or "topn", edges=size)
    return options


def _discover_recording_warnings(task, model, options: dict):
    """discover()'s circuit, and the warnings it gave (every AcdWarning, even a repeated one),
    for ``_print_warnings`` to show once the bars are done."""
    from acd.discover import discover

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", AcdWarning)
        circuit = discover(task, model, **options)
    return circuit, caught


def _print_warnings(caught: list) -> None:
    """acd's warnings as one ``warning:`` line each; any other warning as Python shows it."""
    for w in caught:
        if issubclass(w.category, AcdWarning):
            print(f"warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def _print_saved(circuit, saved, out) -> None:
    """The run's summary, then the files written into ``out`` and the diagram's path."""
    print()
    print(circuit.summary_markdown().rstrip())
    print()
    print(f"wrote {len(saved.paths)} files to {out}/: " + ", ".join(p.name for p in saved.paths))
    diagrams = [p for p in saved.paths if p.suffix in (".svg", ".png", ".pdf")]
    if diagrams:
        print(f"diagram: {diagrams[0]}")
    pages = [p for p in saved.paths if p.suffix == ".html"]
    if pages:
        print(f"interactive page: {pages[0]} (open it in a browser)")
    if saved.note:
        print(saved.note)
