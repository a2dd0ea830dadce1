"""The ``acd`` argument parser: every command's options, help text and example.

The options shared by several commands are defined once (``_model_options``,
``_threads_option``, ``_prompt_options``); the type converters make a bad number one
``acd: error:`` line. Each command's handler is in its own module of acd/cli/.
"""

from __future__ import annotations

import argparse

from acd.cli.curve import cmd_curve
from acd.cli.discover import cmd_discover
from acd.cli.evaluate import cmd_evaluate
from acd.cli.export import cmd_export
from acd.cli.models import cmd_check_model, cmd_models, cmd_roles, cmd_tasks
from acd.cli.saved import cmd_compare, cmd_render
from acd.methods import HYBRID_SCORING, METHODS, SELECTIONS
from acd.metrics import METRICS

EXAMPLES = {
    "models": "example: acd models",
    "tasks": "example: acd tasks",
    "check-model": "example: acd check-model toy --prompts 500",
    "roles": "examples:\n  acd roles                  # the embedded model's heads\n"
    "  acd roles toy --task ioi   # and where IOI's final position attends (IO, S1, S2, ...)",
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
        "  acd render circuit.json --format png --format pdf --out figures/ioi\n"
        "  acd render circuit.json --format html --curve ioi_curve.json  # -> circuit.html"
    ),
    "compare": (
        "examples:\n"
        "  acd compare out/toy/ioi/eap/circuit.json graphs/toy/ioi/eap-ig/circuit.json\n"
        "  acd compare found.json graphs/reference/gpt2-small/ioi.json\n"
        "  acd compare found.json graphs/reference/gpt2-small/ioi.json --html found_vs_ioi.html"
    ),
    "curve": (
        "examples:\n"
        "  acd curve ioi                   # eap, eap-ig, exact -> ioi_curve.png, .svg, .json\n"
        "  acd curve greater-than --methods eap,eap-ig --prompts 50 --out figures/gt\n"
        "  acd curve ioi --positions --methods eap-ig  # over positional edges"
    ),
    "export": (
        "examples:\n"
        "  acd export out/gpt2/ioi/eap-ig/circuit.json --mib mib   # -> mib/ioi_gpt2/\n"
        "  acd export circuit.json --mib mib --kind circuits      # the nine circuits"
    ),
}


class _Parser(argparse.ArgumentParser):
    """argparse with its mistakes in acd's form: one ``acd: error:`` line, exit code 2 (instead
    of a usage block and a second line in argparse's own form)."""

    def error(self, message: str):
        self.exit(2, f"acd: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command; each sets ``func``, its handler, in the parsed arguments."""
    parser = _Parser(
        prog="acd",
        description="Automated circuit discovery for transformer language models.",
        epilog="Run 'acd COMMAND --help' for a command's options and an example.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # In the order 'acd --help' lists them.
    _add_command(
        sub, "models", "List the models available offline (embedded and cached).", cmd_models
    )
    _add_command(sub, "tasks", "List the shipped tasks.", cmd_tasks)
    _check_model_command(sub)
    _roles_command(sub)
    _discover_command(sub)
    _evaluate_command(sub)
    _render_command(sub)
    _compare_command(sub)
    _curve_command(sub)
    _export_command(sub)
    return parser


def _add_command(sub, name: str, help_text: str, func) -> argparse.ArgumentParser:
    """A command's parser: its one-line help as description, its example as epilog (kept as
    written), ``func`` as its handler."""
    p = sub.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog=EXAMPLES[name],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=func)
    return p


def _check_model_command(sub) -> None:
    """acd check-model [MODEL]: the held-out prompt count and seed, the device."""
    p = _add_command(
        sub,
        "check-model",
        "Measure how well a model does the shipped tasks, on held-out prompts.",
        cmd_check_model,
    )
    p.add_argument("model", nargs="?", default="toy", help="model name or path (default: toy)")
    p.add_argument("--prompts", type=_positive_int, default=500, help="prompts per task")
    p.add_argument("--seed", type=int, default=0, help="prompt seed (held out from training)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: best)")
    _threads_option(p)


def _roles_command(sub) -> None:
    """acd roles [MODEL] [--task T]: every head's role scores and badges."""
    p = _add_command(
        sub,
        "roles",
        "Score every head's role: previous-token, duplicate-token, induction, copying, and "
        "where a task's final position attends.",
        cmd_roles,
    )
    p.add_argument("model", nargs="?", default="toy", help="model name or path (default: toy)")
    p.add_argument("--task", default=None, help="a template task (e.g. ioi) for END→variable")
    p.add_argument("--prompts", type=_positive_int, default=50, help="sequences per score")
    p.add_argument("--seed", type=int, default=0, help="seed of the random sequences")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: best)")
    _threads_option(p)


def _discover_command(sub) -> None:
    """acd discover TASK: the model, the method and its options, the prompts, the outputs."""
    help_text = "Find a task's circuit in a model and write its files."
    p = _add_command(sub, "discover", help_text, cmd_discover)
    p.add_argument("task", help="shipped task name (acd tasks) or a .toml/.csv/.jsonl file")
    _model_options(p)
    p.add_argument(
        "--method",
        default="eap-ig",
        choices=list(METHODS),
        help="; ".join(f"{name}: {cls.summary}" for name, cls in METHODS.items()),
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument(
        "--edges",
        type=_nonnegative_int,
        help="edges to keep (default: 5 %% of the graph's edges, at most 200)",
    )
    size.add_argument("--threshold", type=float, help="keep every edge with |score| >= T")
    size.add_argument(
        "--nodes",
        type=_nonnegative_int,
        help="--level node: nodes to keep (default: a quarter of the graph's nodes, at most 50)",
    )
    p.add_argument(
        "--level",
        choices=["edge", "node"],
        default="edge",
        help="edge: keep edges (default); node: keep whole heads and MLPs, each scored by "
        "patching all its outputs, the circuit every edge between kept nodes (scoring methods "
        "only; --threshold then compares node scores)",
    )
    p.add_argument(
        "--positions",
        action="store_true",
        help="a positional circuit: every edge split by the task's named spans (IO, S1, S2, "
        "END, ...; docs/tasks.md 'Spans'), an edge into a key or value input by the span of the "
        "keys and of the queries reading them (--method eap, eap-ig or exact; --edges counts "
        "positional edges)",
    )
    p.add_argument(
        "--selection",
        choices=[name for name in SELECTIONS if name != "threshold"],  # that one: --threshold
        default=None,
        help="with --edges: "
        + "; ".join(f"{n}: {c.summary}" for n, c in SELECTIONS.items() if n != "threshold"),
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
        choices=list(HYBRID_SCORING),
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
        "--frozen-norms",
        action="store_true",
        default=None,  # None when absent, so that _discover_options can refuse it by method
        help="the gradient methods (eap, eap-ig, eap-ig-activations, clean-corrupted, hybrid): "
        "take gradients with every LayerNorm/RMSNorm's mean and scale "
        "held constant (GIM's frozen-norm rule; the forward is unchanged)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="score even when the model's metric does not separate clean from corrupted "
        "prompts (the sanity gate, docs/tasks.md); a warning instead of an error",
    )
    p.add_argument(
        "--no-trust",
        action="store_true",
        help="skip the trust report (fidelity of a gradient method against exact patching on "
        "100 edges, stability over 5 prompt resamples; acd.trust), for speed",
    )
    p.add_argument(
        "--no-roles",
        action="store_true",
        help="skip the head role scores (previous-token, duplicate-token, induction, copying, "
        "where the final position attends; acd.roles) stored on the circuit's heads",
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


def _evaluate_command(sub) -> None:
    """acd evaluate CIRCUIT: the task and model (default: the circuit's), the prompts."""
    help_text = "Measure a saved circuit's faithfulness on fresh prompts."
    p = _add_command(sub, "evaluate", help_text, cmd_evaluate)
    p.add_argument("circuit", help="circuit.json (acd) or an EAP-IG / MIB graph JSON")
    p.add_argument("--task", help="task (default: the circuit's)")
    _model_options(p, default=None, help_default="the circuit's")
    _prompt_options(p, evaluate=True)


def _render_command(sub) -> None:
    """acd render CIRCUIT: the formats, the path stem, the number of edges drawn, the curve of
    the interactive page."""
    help_text = "Draw a saved circuit with Graphviz, or as an interactive page (--format html)."
    p = _add_command(sub, "render", help_text, cmd_render)
    p.add_argument("circuit", help="circuit.json (acd) or an EAP-IG / MIB graph JSON")
    p.add_argument(
        "--format",
        action="append",
        choices=["svg", "png", "pdf", "html"],
        help="output format (default svg; repeat for more); the .dot is written with svg, png "
        "and pdf; html: the interactive page <stem>.html, with the attention patterns of "
        "attention.json beside the circuit file when there is one",
    )
    p.add_argument("--out", help="path stem of the outputs (default: beside the circuit file)")
    p.add_argument(
        "--max-edges",
        type=_positive_int,
        default=300,
        help="draw at most this many edges, the largest |score| (300; the diagram only)",
    )
    p.add_argument(
        "--curve",
        metavar="FILE.json",
        help="with --format html: a faithfulness curve file of acd curve (<stem>.json); the "
        "page's size slider shows the measured faithfulness (the curve of the circuit's method "
        "if the file has one, else its first)",
    )


def _compare_command(sub) -> None:
    """acd compare A B: the number of edges listed per side."""
    p = _add_command(sub, "compare", "Compare two circuits edge by edge.", cmd_compare)
    p.add_argument("a", help="circuit A (circuit.json or EAP-IG JSON)")
    p.add_argument("b", help="circuit B, e.g. a reference circuit from graphs/reference/")
    p.add_argument("--list", type=int, default=20, help="edges listed per side (20)")
    p.add_argument(
        "--html",
        metavar="OUT.html",
        help="also write A's interactive page with B overlaid (edges in both, only in A, only "
        "in B)",
    )


def _curve_command(sub) -> None:
    """acd curve TASK: the scoring methods, the model, the prompts, the chart's path stem."""
    help_text = "Chart faithfulness against circuit size for scoring methods."
    p = _add_command(sub, "curve", help_text, cmd_curve)
    p.add_argument("task", help="shipped task name or a task file")
    p.add_argument(
        "--methods",
        default=None,
        help="comma-separated scoring methods (default eap,eap-ig,exact; with --positions "
        "eap,eap-ig: exact scores every positional edge by its own patched run)",
    )
    p.add_argument(
        "--level",
        choices=["edge", "node"],
        default="edge",
        help="edge: circuits of the top edges (default); node: of the top source nodes, each "
        "removed node patched on all its outputs (x axis: nodes kept)",
    )
    p.add_argument(
        "--positions",
        action="store_true",
        help="rank positional edges (each edge at the task's named spans, as discover "
        "--positions) and evaluate the top ones as positional circuits (x axis: positional "
        "edges kept); the curve for a positional circuit's page (acd render --curve)",
    )
    _model_options(p)
    _prompt_options(p, rows="rows")
    p.add_argument("--out", help="path stem of the chart (default: <task>_curve)")


def _export_command(sub) -> None:
    """acd export CIRCUIT --mib DIR: the kind of submission, MIB's task and model names, signs."""
    help_text = "Write a saved circuit as a MIB circuit-localization submission folder."
    p = _add_command(sub, "export", help_text, cmd_export)
    p.add_argument("circuit", help="circuit.json (acd) or an EAP-IG / MIB graph JSON")
    p.add_argument(
        "--mib", required=True, metavar="DIR", help="submission folder; gets DIR/<task>_<model>/"
    )
    p.add_argument(
        "--kind",
        choices=["importances", "circuits"],
        default="importances",
        help="importances: one file of every edge's score (default); circuits: the nine "
        "circuits of at most 0.1 ... 50 %% of the edges",
    )
    p.add_argument("--mib-task", help="MIB's task name (default: the circuit's task, e.g. ioi)")
    p.add_argument("--mib-model", help="MIB's model name (default: the circuit's model, e.g. gpt2)")
    p.add_argument(
        "--signed",
        action="store_true",
        help="with --kind circuits: rank edges by signed score, most helpful first "
        "(default: by |score|)",
    )
    p.add_argument(
        "--higher-is-helpful",
        action="store_true",
        help="the scores are already MIB's sign (default: only for circuits scored with kl)",
    )


def _model_options(
    p: argparse.ArgumentParser, *, default: str | None = "toy", help_default: str = "toy"
) -> None:
    """--model, --device, --dtype and --threads, of every command that loads a model."""
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
    """--threads, of every command that runs a model (acd/threads.py has the rule)."""
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
    """--prompts, --seed, --metric, --ablation and --batch-size; ``evaluate``: with the defaults
    of re-evaluating a saved circuit; ``rows``: what --prompts is at most all of."""
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
        choices=list(METRICS),
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
    """An option's integer, at least 1 (a count of prompts, edges, steps ...)."""
    return _int_at_least(text, 1)


def _nonnegative_int(text: str) -> int:
    """An option's integer, at least 0 (--edges 0 keeps an empty circuit)."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, lowest: int) -> int:
    # ArgumentTypeError, not ValueError: argparse then prints this message as it is.
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < lowest:
        raise argparse.ArgumentTypeError(f"must be at least {lowest}, got {value}")
    return value
