"""What the host machine has to spare, and which devices it has."""

from __future__ import annotations

import torch


def available_host_memory() -> int | None:
    """Bytes the OS can hand out without swapping (Linux MemAvailable); None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def device_problem(name: str) -> str | None:
    """Why a ``--device`` value cannot run here (the error to print), or None when it can."""
    try:
        device = torch.device(name)
    except RuntimeError:
        return f"--device: {name!r} is not a device; use cpu, cuda or cuda:N"
    if device.type == "cuda" and not torch.cuda.is_available():
        return f"--device {name}: this torch sees no CUDA GPU; use --device cpu"
    return None
