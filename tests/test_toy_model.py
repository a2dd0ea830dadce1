"""The embedded model: it ships, it does its tasks, it needs its attention, and the training
script reproduces its recipe deterministically."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from acd.models import load_model
from acd.models.quality import adapter_runners, task_figures
from acd.models.train_toy import main as train_main

REPO = Path(__file__).resolve().parents[1]
TOY = REPO / "acd" / "models" / "toy"


@pytest.fixture(scope="module")
def toy():
    return load_model("toy", device="cpu")


def test_toy_is_a_small_hf_model_directory():
    names = {p.name for p in TOY.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert sum(p.stat().st_size for p in TOY.iterdir()) <= 10 * 1024 * 1024
    config = json.loads((TOY / "config.json").read_text())
    assert config["architectures"] == ["GPT2LMHeadModel"]
    assert config["n_layer"] >= 4 and config["n_head"] >= 4


def test_toy_meets_every_target_of_check_model_on_held_out_prompts(toy):
    # The tasks' own figures and the mechanism ones (`acd check-model`): the repeat NLL at half
    # lengths 5, 13, 20, 24 with and without 5 words in front, IOI in every ABBA/BABA × 0/3/12-
    # filler cell, a previous-token and an induction head.
    figures = task_figures(*adapter_runners(toy), toy.tokenizer, n_prompts=200, seed=1)
    unmet = [f"{f.name} = {f.value:.3f} (target {f.target})" for f in figures if f.met is False]
    assert not unmet, unmet
    assert sum(f.met is True for f in figures) >= 25  # every target above was measured


def _train(out: Path, seed: int) -> bytes:
    train_main(
        [
            "--out",
            str(out),
            "--seed",
            str(seed),
            "--steps",
            "3",
            "--per-task",
            "2",
            "--layers",
            "1",
            "--heads",
            "2",
            "--d-model",
            "16",
            "--warmup",
            "1",
            "--log-every",
            "100",
        ]
    )
    return (out / "model.safetensors").read_bytes()


@pytest.mark.slow
def test_training_is_deterministic_in_its_seed(tmp_path):
    first, again = _train(tmp_path / "a", 0), _train(tmp_path / "b", 0)
    other = _train(tmp_path / "c", 1)
    assert hashlib.sha256(first).digest() == hashlib.sha256(again).digest()
    assert first != other
    # The directory written is a loadable model, and it records how it was made.
    recipe = json.loads((tmp_path / "a" / "training.json").read_text())
    assert recipe["seed"] == 0 and recipe["command"].startswith("python -m acd.models.train_toy")
    assert load_model(str(tmp_path / "a")).spec.n_layers == 1


@pytest.mark.slow
def test_a_plain_wheel_carries_tasks_and_the_embedded_model(tmp_path):
    """Not only a checkout: `pip install` (non-editable) must bring tasks/ and the toy model."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
        check=True,
    )
    (wheel,) = tmp_path.glob("acd-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in [
        "acd/task_files/ioi.toml",
        "acd/task_files/names.txt",
        "acd/task_files/greater_than.toml",
        "acd/task_files/induction.toml",
        "acd/task_files/varied/ioi.toml",
        "acd/models/toy/model.safetensors",
        "acd/models/toy/tokenizer.json",
        "acd/models/toy/config.json",
    ]:
        assert expected in names
