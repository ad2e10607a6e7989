"""The machine a run trains on: its device (resolved once, at the start of a run: everything below gets a
concrete ``torch.device``), CPU cores and threads, TF32, and its name in ``config.json``."""

from __future__ import annotations

import math
import os
import platform
from pathlib import Path

import torch

from routing_env.config import resolve_device


def run_device(device: str) -> torch.device:
    """The concrete device of a run's ``env.device`` (``"auto"``: CUDA if there is one); one ValueError
    for a device this machine has not."""
    return resolve_device(device)


def use_tf32(device: torch.device, enabled: bool) -> None:
    """TF32 matmuls and convolutions on a CUDA device (about 2x faster on Hopper)."""
    if device.type == "cuda" and enabled:
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True


def device_name(device: torch.device) -> str:
    """The card's name, or the CPU's with the threads torch uses."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"cpu ({platform.processor() or platform.machine()}, {threads} thread{'s' * (threads != 1)})"


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float]:
    """The 1, 5 and 15-minute load averages, rounded (what a CPU timing was measured beside)."""
    return [round(x, 2) for x in os.getloadavg()]


def usable_cores() -> int:
    """The CPU cores this process may use: its affinity mask, capped by its cgroup's CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    for quota_file in _cgroup_cpu_max_files():
        try:
            quota, period = quota_file.read_text().split()
            if quota != "max":
                cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
        except (OSError, ValueError):
            continue
    return cores


def _cgroup_cpu_max_files() -> list[Path]:
    root = Path("/sys/fs/cgroup")
    files = [root / "cpu.max"]
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):  # cgroup v2: this process's group
                files.append(root / line[3:].lstrip("/") / "cpu.max")
    except OSError:
        pass
    return files


def set_threads(threads: int | None) -> int:
    """Use ``threads`` CPU threads, by default the usable cores (never more than torch's own default, so
    ``OMP_NUM_THREADS`` still lowers it). Unbounded, a 2-core share of a big machine runs many threads
    that fight for it, and epoch times swing with the machine's load."""
    torch.set_num_threads(int(threads) if threads else min(torch.get_num_threads(), usable_cores()))
    return torch.get_num_threads()
