"""Saving every file of a run together: the data files (circuit.json, circuit.graphml,
circuit.nodelink.json, summary.md), the diagram (circuit.dot and its renderings) and the
interactive page (circuit.html)."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import networkx as nx

from acd.atomic import atomic_paths
from acd.circuit import Circuit
from acd.diagram import write_diagram
from acd.errors import AcdError
from acd.export.circuit_json import circuit_json
from acd.export.html_page import write_attention_json, write_circuit_html
from acd.export.networkx_graph import nodelink_json, to_networkx
from acd.export.summary import summary_markdown

# Staging folders inside the output directory: ".acd-save-<pid>-<random>.tmp".
_STAGING_PREFIX = ".acd-save-"


@dataclass
class SavedFiles:
    """What ``save_circuit`` wrote: the paths, and a one-line note (e.g. how to render the
    diagram when Graphviz's ``dot`` is missing) or None."""

    paths: list[Path]
    note: str | None = None


def write_data_files(circuit: Circuit, out_dir: str | Path) -> list[Path]:
    """Write circuit.json, circuit.graphml, circuit.nodelink.json and summary.md into
    ``out_dir``; all four are renamed into place together, so a failure replaces none."""
    out = Path(out_dir)
    names = ["circuit.json", "circuit.graphml", "circuit.nodelink.json", "summary.md"]
    targets = [out / name for name in names]
    G = to_networkx(circuit)
    with atomic_paths(targets) as (json_tmp, graphml_tmp, nodelink_tmp, summary_tmp):
        json_tmp.write_text(circuit_json(circuit), encoding="utf-8")
        nx.write_graphml(G, graphml_tmp)
        nodelink_tmp.write_text(nodelink_json(G), encoding="utf-8")
        summary_tmp.write_text(summary_markdown(circuit), encoding="utf-8")
    return targets


def save_circuit(
    circuit: Circuit,
    out_dir: str | Path,
    *,
    formats: tuple[str, ...] = ("svg",),
    max_edges: int = 300,
    attention: dict | None = None,
) -> SavedFiles:
    """Write every file of a run into ``out_dir``: circuit.json, circuit.graphml,
    circuit.nodelink.json, summary.md, circuit.dot, the diagram in ``formats``
    (``acd.diagram.write_diagram``; svg, png, pdf) and circuit.html, the interactive page
    (``acd.export.html_page``). ``attention`` (``attention_examples``): the attention patterns
    the page shows when a head is clicked, also written as attention.json.

    All files are first written into a hidden staging folder inside ``out_dir`` and then
    renamed into place one after the other, so an interruption leaves complete files only:
    Ctrl-C or SIGTERM removes the staging folder on the way out; after a SIGKILL (nothing can
    run) the hidden folder stays until the next save into the same directory removes it.
    """
    # Through the package rather than this module's own name: ``acd.export.write_data_files``
    # is the seam tests replace to interrupt a save half-way (tests/test_cli_discover.py).
    from acd import export

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise AcdError(f"cannot write the circuit into {out}: it is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    _remove_dead_staging(out)
    staging = Path(
        tempfile.mkdtemp(dir=out, prefix=f"{_STAGING_PREFIX}{os.getpid()}-", suffix=".tmp")
    )
    try:
        written = export.write_data_files(circuit, staging)
        diagram = write_diagram(circuit, staging / "circuit", formats, max_edges=max_edges)
        written += diagram.paths
        written.append(write_circuit_html(circuit, staging / "circuit.html", attention=attention))
        if attention is not None:
            written.append(write_attention_json(attention, staging / "attention.json"))
        targets = []
        # Each file is complete (written through acd.atomic); moving it out of the staging
        # folder in the same directory tree is one rename.
        for path in written:
            os.replace(path, out / path.name)
            targets.append(out / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    note = diagram.message.replace(str(staging), str(out)) if diagram.message else None
    return SavedFiles(targets, note)


def _remove_dead_staging(out: Path) -> None:
    """Remove staging folders left by saves whose process no longer runs (killed)."""
    for folder in out.glob(f"{_STAGING_PREFIX}*.tmp"):
        pid_text = folder.name[len(_STAGING_PREFIX) :].split("-", 1)[0]
        if pid_text.isdigit() and not _process_alive(int(pid_text)):
            shutil.rmtree(folder, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # a folder of our own pid is from an earlier, dead process of that pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True
