"""The warm worker's CUDA record (client.worker.CudaLog): checked on the CPU, with a
stand-in torch for the CUDA case (the GPU run itself is bench/gpu_check.sh's)."""

from __future__ import annotations

import os
import sys
import types

import torch

from client.worker import CudaLog


def test_cpu_worker_reports_cuda_not_used():
    assert not torch.cuda.is_initialized()  # nothing in a CPU test suite may initialise CUDA
    record = CudaLog()
    assert record.after_message() == [f"warm worker {os.getpid()}: message 1 served; cuda not used"]
    assert record.after_message() == [f"warm worker {os.getpid()}: message 2 served; cuda not used"]


def fake_torch(initialised: list[bool]):
    cuda = types.SimpleNamespace(
        is_initialized=lambda: initialised[0],
        get_device_name=lambda: "NVIDIA H200",
        max_memory_allocated=lambda: 3 * 2**20,
        memory_reserved=lambda: 20 * 2**20,
    )
    return types.SimpleNamespace(cuda=cuda)


def test_cuda_initialisation_is_logged_once_then_memory_after_every_message(monkeypatch):
    initialised = [False]
    monkeypatch.setitem(sys.modules, "torch", fake_torch(initialised))
    record = CudaLog()
    pid = os.getpid()
    assert record.after_message() == [f"warm worker {pid}: message 1 served; cuda not used"]
    initialised[0] = True  # message 2 moved the model to the GPU
    memory = "cuda max_memory_allocated 3.0 MiB, memory_reserved 20.0 MiB"
    assert record.after_message() == [
        f"warm worker {pid}: CUDA initialised in pid {pid} (by message 2; NVIDIA H200)",
        f"warm worker {pid}: message 2 served; {memory}",
    ]
    assert record.after_message() == [f"warm worker {pid}: message 3 served; {memory}"]
