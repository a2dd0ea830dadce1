"""``acd models``, ``acd tasks`` and ``acd check-model``: what there is to run, and how well a
model does the shipped tasks."""

from __future__ import annotations

import argparse
import time

from acd.cli.common import cell, quiet_transformers, table
from acd.run_checks import check_held_out_seed, check_model


def cmd_models(args: argparse.Namespace) -> int:
    """List the models available offline."""
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
                cell(m.n_layers),
                cell(m.n_heads),
                cell(m.d_model),
                cell(m.n_params),
                str(m.path),
            )
        )
    print(table(rows))
    print("\nA local Hugging Face model directory works wherever a name does: acd check-model DIR")
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    """List the shipped tasks."""
    from acd.tasks import list_tasks

    rows = [("name", "kind", "metric", "description")]
    rows += [(t.name, t.kind, t.metric, t.description) for t in list_tasks()]
    print(table(rows))
    print("\nYour own task: a .toml, .csv or .jsonl file; see docs/tasks.md")
    return 0


def cmd_check_model(args: argparse.Namespace) -> int:
    """Print a model's figures on the shipped tasks and its head roles; exit 1 when a figure
    misses its target."""
    from acd.models import load_model
    from acd.models.quality import adapter_runners, format_figures, role_figures, task_figures
    from acd.roles import adapter_patterns

    check_held_out_seed(args.seed)
    start = time.perf_counter()
    quiet_transformers()
    check_model(args.model, args.device)
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


def cmd_roles(args: argparse.Namespace) -> int:
    """Print every head's role scores (acd.roles) and badges, for a task if given."""
    from acd.errors import AcdError
    from acd.models import load_model
    from acd.roles import BADGES, ROLE_THRESHOLD, head_role_scores, role_badges, roles_apply
    from acd.tasks import load_task

    task = load_task(args.task) if args.task else None
    quiet_transformers()
    check_model(args.model, args.device)
    model = load_model(args.model, device=args.device)
    if not roles_apply(model):
        raise AcdError(
            f"the head roles do not apply to {model.name}: they need a causal language model "
            "with a vocabulary to draw repeated random sequences from"
        )
    start = time.perf_counter()
    roles = head_role_scores(model, task, n_prompts=args.prompts, seed=args.seed)
    columns = list(next(iter(roles.values())))
    header = ["head", *(_role_column(c, BADGES) for c in columns), "badges"]
    rows = [header] + [
        [name, *(f"{scores[c]:.2f}" for c in columns), " ".join(role_badges(scores)) or "-"]
        for name, scores in roles.items()
    ]
    where = f" and where the final position of {task.name} attends" if task else ""
    print(f"{model.name}: head roles on repeated random sequences{where} ({args.prompts} prompts)")
    print(table([tuple(r) for r in rows]))
    print(
        f"\nbadges: a score >= {ROLE_THRESHOLD} (docs/models.md, 'Head roles', defines each); "
        f"{time.perf_counter() - start:.1f} s"
    )
    return 0


def _role_column(role: str, badges: dict[str, str]) -> str:
    """A short column title: the badge of a role, END→X for a template variable."""
    if role.startswith("end_to_"):
        return "END→" + role.removeprefix("end_to_")
    return badges.get(role, role)
