"""What the host machine has to spare."""

from __future__ import annotations


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
