"""``acd export``: write a saved circuit in another project's layout (a MIB submission)."""

from __future__ import annotations

import argparse

from acd.circuit_files import load_circuit_file
from acd.preflight import check_out_dir


def cmd_export(args: argparse.Namespace) -> int:
    """Write the circuit's ``{task}_{model}`` folder into the MIB submission folder, print the
    files written and what MIB's submission check would still object to in that folder."""
    from acd.export.mib import mib_layout_problems, write_mib

    circuit = load_circuit_file(args.circuit)
    check_out_dir(args.mib, "--mib")
    folder = write_mib(
        circuit,
        args.mib,
        kind=args.kind,
        task=args.mib_task,
        model=args.mib_model,
        absolute=not args.signed,
        # The flag only says yes; without it the circuit's metric decides (write_mib).
        higher_is_helpful=True if args.higher_is_helpful else None,
    )
    names = sorted(p.name for p in folder.iterdir())
    print(f"wrote {folder}/: {', '.join(names)}")
    for problem in mib_layout_problems(args.mib):
        print(f"note: {problem}")
    return 0
