"""The `acd` command line: a thin layer over the Python API.

Every user mistake ends as one line on stderr (``acd: error: ...``) and exit code 2; nothing
the user typed wrong produces a traceback.
"""

from __future__ import annotations

import argparse
import sys
import time

from acd.errors import AcdError

EXAMPLES = {
    "models": "example: acd models",
    "tasks": "example: acd tasks",
    "check-model": "example: acd check-model toy --prompts 500",
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
    from acd.models.quality import adapter_runners, format_figures, task_figures
    from acd.models.train_toy import TRAIN_SEED_BASE

    if args.seed >= TRAIN_SEED_BASE:
        raise AcdError(
            f"--seed {args.seed}: seeds from {TRAIN_SEED_BASE} on are used for training; "
            "held-out prompts need a smaller seed"
        )
    start = time.perf_counter()
    _quiet_transformers()
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
    print(format_figures(figures))
    print(f"\n{time.perf_counter() - start:.1f} s")
    return 0 if all(f.met is not False for f in figures) else 1


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except AcdError as err:
        print(f"acd: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("acd: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
