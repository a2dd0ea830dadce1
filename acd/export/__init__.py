"""Circuit files: circuit.json, networkx (GraphML, node-link JSON), EAP-IG's graph JSON,
summary.md, circuit.html.

One module per job; this package re-exports each public name, so ``from acd.export import ...``
works as before:

    circuit_json    circuit.json, the whole Circuit; ``load_circuit`` reads it back bit for bit
    networkx_graph  the kept edges as a networkx MultiDiGraph (``to_networkx``), written as
                    circuit.graphml and circuit.nodelink.json
    eapig           hannamw/EAP-IG's ``Graph.to_json`` / ``Graph.from_json`` (also MIB's)
    mib             a MIB circuit-localization submission: ``{task}_{model}`` folders of
                    EAP-IG files (``write_mib``, ``read_mib``)
    summary         summary.md, a short human-readable summary
    html_page       circuit.html, one self-contained interactive page (``write_circuit_html``),
                    and the attention patterns it shows (``attention_examples``,
                    attention.json)
    save            every file of a run at once (``save_circuit``, ``Circuit.save``)

Every writer goes through ``acd.atomic``, so an interrupted run leaves either the old file or
the complete new one. docs/formats.md describes each format with examples. The dependency goes
one way: these modules import ``acd.circuit``; ``Circuit``'s conveniences (``save``,
``to_networkx``, ``summary_markdown``) import this package only when called.
"""

from acd.export.circuit_json import (
    circuit_from_dict,
    circuit_json,
    circuit_to_dict,
    load_any_circuit,
    load_circuit,
    save_circuit_json,
)
from acd.export.eapig import eapig_dict, eapig_from_dict, read_eapig_json, write_eapig_json
from acd.export.html_page import (
    attention_examples,
    circuit_html,
    read_attention_json,
    write_attention_json,
    write_circuit_html,
)
from acd.export.mib import MibFolder, mib_layout_problems, read_mib, read_mib_folder, write_mib
from acd.export.networkx_graph import (
    nodelink_json,
    read_networkx,
    to_networkx,
    write_graphml,
    write_nodelink,
)
from acd.export.save import SavedFiles, save_circuit, write_data_files
from acd.export.summary import summary_markdown

__all__ = [
    "MibFolder",
    "SavedFiles",
    "attention_examples",
    "circuit_from_dict",
    "circuit_html",
    "circuit_json",
    "circuit_to_dict",
    "eapig_dict",
    "eapig_from_dict",
    "load_any_circuit",
    "load_circuit",
    "mib_layout_problems",
    "nodelink_json",
    "read_attention_json",
    "read_eapig_json",
    "read_mib",
    "read_mib_folder",
    "read_networkx",
    "save_circuit",
    "save_circuit_json",
    "summary_markdown",
    "to_networkx",
    "write_attention_json",
    "write_circuit_html",
    "write_data_files",
    "write_eapig_json",
    "write_graphml",
    "write_mib",
    "write_nodelink",
]
