"""`describe_machine`: the hardware and software a run ran on, as the job's card and the benchmarks' results record
it."""

from __future__ import annotations

import os
import platform
from typing import Any

import torch


def describe_machine() -> dict[str, Any]:
    """The device (the GPU's name, else the CPU's), CPU cores, torch threads, and the Python, torch and transformers
    versions."""
    import transformers

    cuda = torch.cuda.is_available()
    return {
        "device": torch.cuda.get_device_name(0) if cuda else f"CPU ({platform.processor() or platform.machine()})",
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def machine_line(machine: dict[str, Any] | None = None) -> str:
    """One line of `describe_machine()` (or of the description given), for a card or a log."""
    machine = machine or describe_machine()
    return f"{machine['device']}, {machine['torch_threads']} threads, torch {machine['torch']}"


__all__ = ["describe_machine", "machine_line"]
