"""The README's Python examples run as written (from the repository root)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def python_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_has_the_networkx_example():
    assert any("to_networkx" in block for block in python_blocks())


@pytest.mark.slow  # the README's examples end to end (100-prompt discoveries with trust reports)
@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_python_block_runs(index, monkeypatch, tmp_path, capsys):
    block = python_blocks()[index]
    # Relative paths in the examples: inputs from the repository, outputs into tmp_path.
    block = block.replace('"graphs/', f'"{ROOT}/graphs/').replace('"out/', f'"{tmp_path}/out/')
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block, f"README.md python block {index}", "exec"), namespace)
    if "to_networkx" in block:
        G, circuit = namespace["G"], namespace["circuit"]
        assert G.number_of_edges() == circuit.n_edges > 0
        assert "->" in capsys.readouterr().out
    if "circuit.save" in block:
        assert (tmp_path / "out" / "ioi-python" / "circuit.json").exists()
