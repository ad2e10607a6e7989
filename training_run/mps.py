"""CUDA MPS (NVIDIA's Multi-Process Service) for several runs on one card.

Without MPS, the processes that share a GPU take turns on it (time slicing): four MNIST-MTL trainings at
once ran no faster in all than one alone on an H100. Under MPS their kernels run side by side (1.4x in
all on that card, issue 28). :func:`cuda_mps` starts NVIDIA's control daemon (``nvidia-cuda-mps-control
-d``) for the processes started inside it, reuses one that runs already, and falls back to time slicing
where there is none; it says which in one line. The sweep runner (:mod:`training_run.sweep`, trials that
share a card) and ``scripts/benchmark.py --parallel`` use it; ``--no-mps`` turns it off.

MPS serves processes that start after its daemon: the runs must be started inside :func:`cuda_mps`. The
daemon uses ``$CUDA_MPS_PIPE_DIRECTORY`` and ``$CUDA_MPS_LOG_DIRECTORY`` where set (the runs need the same).
A CUDA process joins any daemon it finds there, so with MPS off and a daemon running, :func:`cuda_mps`
points the runs' ``$CUDA_MPS_PIPE_DIRECTORY`` at an empty folder: they find none and run without it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass

CONTROL = "nvidia-cuda-mps-control"
TIMEOUT_S = 20.0  # a control command that hangs (a stale pipe) counts as no daemon
TIME_SLICING = "the runs share the card by time slicing"
PIPE_DIRECTORY = "CUDA_MPS_PIPE_DIRECTORY"


@dataclass(frozen=True)
class MPSState:
    """Whether the runs started now use MPS.

    Attributes:
        active: the control daemon runs: processes started from now on are MPS clients.
        started: this process started the daemon (and :func:`stop_mps` stops it).
        message: the one line that says so (printed by :func:`cuda_mps`).
        control: the path of ``nvidia-cuda-mps-control``; None where it is not on ``PATH``.
        bypass: MPS is off but its daemon runs: the runs must not find it (:func:`cuda_mps` hides it).
    """

    active: bool
    started: bool
    message: str
    control: str | None = None
    bypass: bool = False


def _control(control: str, *args: str, command: str | None = None) -> subprocess.CompletedProcess | None:
    """``nvidia-cuda-mps-control ARGS``, with ``command`` on its standard input; None where it could not run
    or did not answer in time."""
    try:
        return subprocess.run(
            [control, *args], input=command, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None


def mps_running(control: str) -> bool:
    """Whether the MPS control daemon answers (``get_server_list`` succeeds only with a daemon)."""
    done = _control(control, command="get_server_list\n")
    return done is not None and done.returncode == 0


def start_mps(enabled: bool = True) -> MPSState:
    """Start the MPS control daemon unless it runs already; the state, never an error: without MPS the
    runs still run, by time slicing.

    Args:
        enabled: False: do not use MPS (``--no-mps``).
    """
    control = shutil.which(CONTROL)
    if not enabled:
        if control is not None and mps_running(control):
            return MPSState(
                False,
                False,
                f"CUDA MPS off (--no-mps): a daemon runs; the runs are pointed away from it: {TIME_SLICING}",
                control,
                bypass=True,
            )
        return MPSState(False, False, f"CUDA MPS off (--no-mps): {TIME_SLICING}")
    if control is None:
        return MPSState(False, False, f"CUDA MPS not available (no {CONTROL} on PATH): {TIME_SLICING}")
    if mps_running(control):
        return MPSState(True, False, "CUDA MPS: its control daemon runs already; the runs use it", control)
    done = _control(control, "-d")
    if done is None or done.returncode != 0:
        why = (
            "no answer" if done is None else (done.stderr or done.stdout).strip() or f"exit {done.returncode}"
        )
        return MPSState(
            False, False, f"CUDA MPS did not start ({CONTROL} -d: {why}): {TIME_SLICING}", control
        )
    if not mps_running(control):
        return MPSState(
            False,
            False,
            f"CUDA MPS did not start ({CONTROL} -d ran, no daemon answers): {TIME_SLICING}",
            control,
        )
    return MPSState(True, True, f"CUDA MPS: started its control daemon ({CONTROL} -d) for the runs", control)


def stop_mps(state: MPSState) -> None:
    """Stop the daemon where ``state`` says this process started it (a daemon found running stays)."""
    if state.started and state.control is not None:
        _control(state.control, command="quit\n")


@contextlib.contextmanager
def cuda_mps(enabled: bool = True, say: Callable[[str], None] = print) -> Iterator[MPSState]:
    """MPS for the processes started inside (:func:`start_mps`); ``say`` gets the one line that tells
    whether they use it; the daemon this started stops at the end. With MPS off and a daemon running, the
    processes started inside see an empty ``$CUDA_MPS_PIPE_DIRECTORY`` (restored at the end)."""
    state = start_mps(enabled)
    say(state.message)
    with contextlib.ExitStack() as stack:
        if state.bypass:
            empty = stack.enter_context(tempfile.TemporaryDirectory(prefix="no-mps-"))
            stack.enter_context(_environ(PIPE_DIRECTORY, empty))
        try:
            yield state
        finally:
            stop_mps(state)


@contextlib.contextmanager
def _environ(name: str, value: str) -> Iterator[None]:
    """``os.environ[name] = value`` inside, the old value (or none) after."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old
