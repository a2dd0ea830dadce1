"""The faithfulness chart (``acd.curves.plot_faithfulness``), on hand-made curves."""

from __future__ import annotations

import os
import stat
import xml.etree.ElementTree as ET

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from acd.atomic import atomic_write
from acd.curves import CURVE_PERCENTS, FaithfulnessCurve, edge_counts, plot_faithfulness
from acd.errors import AcdError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
N_EDGES = 479  # floors the first two of MIB's points to 0 edges


def make_curve(values, spread=0.1, n=N_EDGES):
    return FaithfulnessCurve(
        percents=tuple(float(p) for p in CURVE_PERCENTS),
        n_edges=edge_counts(CURVE_PERCENTS, n),
        faithfulness=tuple(values),
        faithfulness_p05=tuple(v - spread for v in values),
        faithfulness_p95=tuple(v + spread for v in values),
        absolute=True,
        metric="logit_diff",
        ablation="corrupted",
        n_prompts=8,
    )


@pytest.fixture
def curves():
    return {
        "eap": make_curve([0.0, 0.0, 0.2, 0.35, 0.5, 0.8, 0.95, 1.05, 1.02, 1.0]),
        "eap-ig": make_curve([0.0, 0.0, 0.3, 0.5, 0.7, 0.9, 1.0, 1.0, 1.0, 1.0], spread=0.05),
        "_random": make_curve([0.0, 0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.7, 1.0]),
    }


def _svg_text(path):
    root = ET.parse(path).getroot()  # raises if the SVG is not well-formed XML
    return " ".join(t for el in root.iter() for t in (el.text, el.tail) if t)


def test_writes_png_and_svg(tmp_path, curves):
    out = tmp_path / "nested" / "dir" / "chart"
    paths = plot_faithfulness(curves, out, title="IOI faithfulness")
    assert paths == [out.with_name("chart.png"), out.with_name("chart.svg")]
    png, svg = paths
    data = png.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert 10_000 < len(data) < 2_000_000
    text = _svg_text(svg)
    for name in curves:  # "_random" too: a leading underscore must not hide it from the legend
        assert name in text
    assert "IOI faithfulness" in text
    assert f"edges kept (of {N_EDGES})" in text
    assert "faithfulness" in text
    # Nothing but the two charts is left in the directory.
    assert sorted(p.name for p in out.parent.iterdir()) == ["chart.png", "chart.svg"]


def test_charts_get_the_permissions_of_other_acd_files(tmp_path, curves):
    """Both charts are written with a normal file's mode (0644 under umask 022), as every
    other file acd writes (acd.atomic), not the 0600 of a bare temporary file."""
    previous = os.umask(0o022)
    try:
        png, svg = plot_faithfulness(curves, tmp_path / "chart")
        other = atomic_write(tmp_path / "other.json", "{}")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(other.stat().st_mode) == 0o644
    for chart in (png, svg):
        assert stat.S_IMODE(chart.stat().st_mode) == 0o644, chart.name


def test_accepts_str_and_overwrites(tmp_path, curves):
    out = str(tmp_path / "c")
    plot_faithfulness({"eap": curves["eap"]}, out)
    first = (tmp_path / "c.svg").read_text()
    plot_faithfulness(curves, out, title="again")
    second = (tmp_path / "c.svg").read_text()
    assert "again" in second and "again" not in first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.png", "c.svg"]


def test_nan_percentiles_are_drawn(tmp_path):
    curve = make_curve([0.0, 0.0, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0, 1.0, 1.0])
    curve.faithfulness_p05 = (float("nan"),) * 10
    curve.faithfulness_p95 = (float("nan"),) * 10
    png, svg = plot_faithfulness({"degenerate": curve}, tmp_path / "nan")
    assert png.read_bytes().startswith(PNG_SIGNATURE)
    assert "degenerate" in _svg_text(svg)


@pytest.mark.parametrize("partial", [False, True])
def test_interrupted_write_leaves_nothing(tmp_path, curves, monkeypatch, partial):
    def boom(self, filename, *args, **kwargs):
        if partial:  # a renderer that dies half-way through its file
            with open(filename, "wb") as f:
                f.write(PNG_SIGNATURE)
        raise OSError("disk full")

    monkeypatch.setattr(FigureCanvasAgg, "print_figure", boom)
    with pytest.raises(OSError, match="disk full"):
        plot_faithfulness(curves, tmp_path / "chart")
    assert list(tmp_path.iterdir()) == []


def test_failure_on_second_format_keeps_old_files(tmp_path, curves, monkeypatch):
    out = tmp_path / "chart"
    plot_faithfulness(curves, out, title="old")
    old = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real = FigureCanvasAgg.print_figure

    def svg_fails(self, filename, *args, format=None, **kwargs):
        if format == "svg":
            raise RuntimeError("svg backend broke")
        return real(self, filename, *args, format=format, **kwargs)

    monkeypatch.setattr(FigureCanvasAgg, "print_figure", svg_fails)
    with pytest.raises(RuntimeError, match="svg backend broke"):
        plot_faithfulness(curves, out, title="new")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == old


def test_empty_mapping_is_refused(tmp_path):
    with pytest.raises(AcdError, match="at least one curve"):
        plot_faithfulness({}, tmp_path / "chart")
    assert list(tmp_path.iterdir()) == []


def test_curve_with_no_edges_is_refused(tmp_path):
    empty = make_curve([0.0] * 10, n=5)  # 5 edges: every point below 20 % keeps none
    empty.n_edges = (0,) * 10
    with pytest.raises(AcdError, match="no point that keeps an edge"):
        plot_faithfulness({"none": empty}, tmp_path / "chart")


def test_mismatched_lengths_are_refused(tmp_path, curves):
    bad = curves["eap"]
    bad.faithfulness = bad.faithfulness[:-1]
    with pytest.raises(AcdError, match="differ in length"):
        plot_faithfulness({"eap": bad}, tmp_path / "chart")


@pytest.mark.parametrize("name", ["", "   ", 3])
def test_bad_names_are_refused(tmp_path, curves, name):
    with pytest.raises(AcdError, match="non-empty strings"):
        plot_faithfulness({name: curves["eap"]}, tmp_path / "chart")
