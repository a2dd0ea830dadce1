"""Schemas of the files acd reads, checked once when a file is read (docs/formats.md).

One module per file kind:

    circuit     circuit.json (``acd.export.load_circuit``, ``circuit_from_dict``)
    eapig       EAP-IG / MIB graph JSON (``acd.export.read_eapig_json``, ``eapig_from_dict``)
    task_file   task TOML files and their word lists (``acd.tasks.load_task``)
    pair_file   CSV / JSONL files of prompt pairs (``acd.tasks.load_task``)
    checkpoint  ACDC checkpoints (``acd.acdc``)
    common      the pieces they share: reading a file, one-line errors, strict number types

The schemas are pydantic (v2) models in strict mode: a value of the wrong JSON/TOML type is
refused rather than coerced (``"no"`` is not a bool, ``4.0`` not an int, ``"0.5"`` not a
number). Every violation becomes one ``AcdError`` (``TaskError`` for task files) line that
names the file, the field and what was expected.

This package imports nothing at import time, so that ``acd.tasks`` can use ``task_file``
without importing the circuit schemas (which import ``acd.tasks`` back).
"""
