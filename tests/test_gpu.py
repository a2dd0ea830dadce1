"""The engine on a CUDA device gives what it gives on the CPU (marker ``gpu``: skipped without
CUDA, so CI skips it; run on a GPU machine with ``pytest -m gpu``)."""

from __future__ import annotations

import pytest
import torch

import acd
from acd.memory import free_memory_bytes

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def pair():
    cpu = acd.load_model("toy", device="cpu", dtype="float64")
    gpu = acd.load_model("toy", device="cuda", dtype="float64")
    return cpu, gpu


@pytest.mark.parametrize("method", ["eap", "eap-ig", "exact"])
def test_scores_on_cuda_equal_the_cpus(pair, method):
    cpu, gpu = pair
    graph = acd.ComputeGraph.from_model(cpu)
    batch = acd.load_task("ioi").make_batch(cpu.tokenizer, 6, seed=0)
    on_cpu = acd.attribute(cpu, graph, batch, method, progress=False)
    on_gpu = acd.attribute(gpu, graph, batch, method, progress=False)
    assert on_gpu.device.type == "cpu"  # scores come back to the host
    torch.testing.assert_close(on_gpu, on_cpu, rtol=1e-9, atol=1e-12)


def test_evaluation_and_acdc_on_cuda_equal_the_cpus(pair):
    cpu, gpu = pair
    run = acd.RunConfig(progress=False)
    a = acd.discover("ioi", cpu, method=acd.ACDC(0.05), prompts=4, run=run)
    b = acd.discover("ioi", gpu, method=acd.ACDC(0.05), prompts=4, run=run)
    assert torch.equal(a.mask, b.mask)
    assert b.metrics["faithfulness"] == pytest.approx(a.metrics["faithfulness"], abs=1e-9)


def test_free_memory_is_read_on_cuda():
    free = free_memory_bytes("cuda")
    assert free is not None and 0 < free <= torch.cuda.get_device_properties(0).total_memory
