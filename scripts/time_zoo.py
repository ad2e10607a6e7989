"""Time the first update of every RL Baselines3 Zoo file in hyperparams/, as shipped, on this machine.

    python scripts/time_zoo.py                  # every file, RoutingMNIST-v0: results/zoo_first_update.json
    python scripts/time_zoo.py --algos trpo --timeout 900
    python scripts/time_zoo.py --device cuda --out results/zoo_first_update_gpu.json   # on a GPU machine

Each file runs in a process of its own through ``rl_zoo3.train`` with the file's settings and the env's
defaults (only the data root, the device and ``--eval-freq -1`` are given), until its first update has
finished (the process then stops) or ``--timeout`` seconds have passed. Recorded per file: the seconds to
build the env and the model, to collect the first rollout (for DQN and QR-DQN the ``learning_starts``
warm-up steps; ARS has no separate rollout: its update runs its evaluation episodes), the first update
itself, the peak memory, the load average before and after (the CPU may be shared), and the file's
SHA-1, so a changed file shows as untimed. A file that needs more than ``--memory-gb`` of address space
is stopped and recorded with the error. Results of files not run this time are kept.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HYPERPARAMS = ROOT / "hyperparams"
DEFAULT_OUT = ROOT / "results" / "zoo_first_update.json"
MARK = "time_zoo:"  # the child's progress lines: MARK {"event": ..., "t": ...}


def file_sha1(algo: str) -> str:
    return hashlib.sha1((HYPERPARAMS / f"{algo}.yml").read_bytes()).hexdigest()


def zoo_algos() -> list[str]:
    return sorted(p.stem for p in HYPERPARAMS.glob("*.yml"))


class FirstUpdateDone(Exception):
    """Raised by the timed update to stop the zoo's training loop after one update."""


def peak_rss_gb() -> float:
    """This process's peak resident memory so far, in GB (Linux reports ru_maxrss in KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


def child(algo: str, env_id: str, data_root: str, device: str, logs: str) -> None:
    """Run ``rl_zoo3.train`` in this process, printing a line at each event (and the peak memory every few
    seconds) and stopping after the first update."""
    start = time.perf_counter()
    lock = threading.Lock()  # the memory watcher prints too: one whole line at a time

    def report(event: str, value: float | None = None) -> None:
        t = time.perf_counter() - start if value is None else value
        line = MARK + " " + json.dumps({"event": event, "t": t}) + "\n"
        with lock:
            sys.stdout.write(line)
            sys.stdout.flush()

    def watch_memory() -> None:
        while True:
            report("peak_rss_gb", peak_rss_gb())
            time.sleep(2)

    threading.Thread(target=watch_memory, daemon=True).start()

    from rl_zoo3.train import train
    from rl_zoo3.utils import ALGOS

    cls = ALGOS[algo]
    update_name = "_do_one_update" if algo == "ars" else "train"
    update, learn = getattr(cls, update_name), cls.learn

    def timed_learn(self: Any, *args: Any, **kwargs: Any) -> Any:
        import torch

        report("threads", torch.get_num_threads())
        report("learn_start")
        return learn(self, *args, **kwargs)

    def timed_update(self: Any, *args: Any, **kwargs: Any) -> None:
        report("update_start")
        update(self, *args, **kwargs)
        report("update_end")
        report("peak_rss_gb", peak_rss_gb())
        raise FirstUpdateDone

    setattr(cls, update_name, timed_update)
    cls.learn = timed_learn
    sys.argv = [
        "rl_zoo3.train", "--algo", algo, "--env", env_id, "--gym-packages", "routing_env",
        "-conf", str(HYPERPARAMS / f"{algo}.yml"), "--env-kwargs", f"data_root:{data_root!r}",
        f"device:{device!r}", "--device", device, "--eval-freq", "-1", "-f", logs, "--seed", "0",
        "--verbose", "0",
    ]  # fmt: skip
    try:
        train()
    except FirstUpdateDone:
        pass


def time_file(
    algo: str, env_id: str, data_root: Path, device: str, timeout: float, memory_gb: float | None, logs: Path
) -> dict:
    """One file's timings (seconds), from a child process that is stopped after ``timeout`` seconds or
    when it asks for more than ``memory_gb`` of address space (so that it cannot starve a shared
    machine)."""
    load_before = os.getloadavg()
    args = [sys.executable, __file__, "--child", algo, env_id, str(data_root), device, str(logs)]

    def cap_memory() -> None:
        if memory_gb:
            limit = int(memory_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    error = None
    try:
        done = subprocess.run(
            args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, preexec_fn=cap_memory
        )
        stdout = done.stdout
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines() or [f"exit code {done.returncode}"]
            error = lines[-1][:300]
    except subprocess.TimeoutExpired as e:
        stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
    events = {}
    for line in stdout.splitlines():
        try:
            entry = json.loads(line[len(MARK) :]) if line.startswith(MARK) else None
        except json.JSONDecodeError:  # a line cut short by the kill
            entry = None
        if entry is not None:
            events[entry["event"]] = entry["t"]
    finished = "update_end" in events
    if error and not finished:
        print(f"{algo}: rl_zoo3.train failed: {error}", file=sys.stderr)
    result = {
        "finished": finished,
        "error": None if finished else error,
        "timeout_s": timeout,
        "memory_limit_gb": memory_gb,
        "peak_rss_gb": events.get("peak_rss_gb"),
        "setup_s": _span({**events, "zero": 0.0}, "zero", "learn_start"),
        "rollout_s": _span(events, "learn_start", "update_start"),
        "update_s": _span(events, "update_start", "update_end"),
        "first_update_s": _span(events, "learn_start", "update_end"),
        "torch_threads": events.get("threads"),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "file_sha1": file_sha1(algo),
    }
    return result


def _span(events: dict[str, float], a: str, b: str) -> float | None:
    return round(events[b] - events[a], 2) if a in events and b in events else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algos", nargs="*", default=None, help="the files to time (default: all)")
    p.add_argument("--env", default="RoutingMNIST-v0")
    p.add_argument("--data-root", type=Path, default=os.environ.get("ROUTING_ENV_DATA"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per file before it is stopped")
    p.add_argument(
        "--memory-gb",
        type=float,
        default=None,
        help="address space a file may use (GB); default 8 on a CPU, no cap on a GPU (CUDA reserves more)",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(*args.child)
        return
    if args.memory_gb is None:
        args.memory_gb = None if args.device.startswith("cuda") else 8.0
    if args.data_root is None:
        raise SystemExit("give --data-root (or set ROUTING_ENV_DATA) to where the benchmark's data is")
    import tempfile

    import torch

    from training_run.machine import cpu_name

    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    if results.get("env_id", args.env) != args.env or results.get("device", args.device) != args.device:
        results = {}  # another setting: start a new file rather than mix them
    results.update(
        env_id=args.env,
        device=args.device,
        machine={
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
        },
    )
    files = results.setdefault("files", {})
    for algo in args.algos or zoo_algos():
        with tempfile.TemporaryDirectory() as logs:
            files[algo] = time_file(
                algo, args.env, args.data_root, args.device, args.timeout, args.memory_gb, Path(logs)
            )
        files[algo]["measured"] = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
        print(algo, json.dumps(files[algo]), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
