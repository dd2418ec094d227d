"""How much memory this process may use: its cgroup's limit where there is one, else the
machine's physical memory. FLOWAGG_MAX_MEMORY_BYTES defaults to a quarter of it."""

from __future__ import annotations

import os
from pathlib import Path


def memory_available() -> tuple[int, str]:
    """The memory this process may use, and where that figure comes from: its cgroup's limit
    (v2 ``memory.max``, v1 ``memory.limit_in_bytes``) where there is one, else the machine's
    physical memory."""
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in _cgroup_limit_files():
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < physical:  # "max", or v1's huge number: no limit
            return int(text), f"the cgroup limit ({path})"
    return physical, "physical memory"


def _cgroup_limit_files() -> list[str]:
    files = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: one hierarchy
            files.append(f"/sys/fs/cgroup{path.rstrip('/')}/memory.max")
        elif "memory" in controllers.split(","):
            files.append(f"/sys/fs/cgroup/memory{path.rstrip('/')}/memory.limit_in_bytes")
    return files + ["/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"]


def default_memory_limit() -> int:
    """FLOWAGG_MAX_MEMORY_BYTES when unset: a quarter of ``memory_available()``."""
    return memory_available()[0] // 4
