"""The speed options compute what the default code computes: the router in bf16 (``--router-precision``)
keeps fp32 parameters and outputs, updates as fp32 does and learns as fp32 does (on the CPU: bf16 autocast
is torch's on the CPU too; tests/test_gpu.py runs the same on a GPU). CUDA MPS for runs that share a card
(:mod:`training_run.mps`) starts, reuses or falls back as it should, with its control binary faked."""

from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path

import pytest
import torch
from stable_baselines3.common.logger import Logger

from agents.algorithms import ALGORITHMS
from agents.config import AgentConfig, RouterConfig
from agents.evaluation import evaluate
from agents.policy import RouterPolicy
from agents.rollout import LRNMaskablePPO
from agents.router import LRNRouter, RouterInput
from routing_env import RoutingConfig, RoutingSB3VecEnv, compiling, make_engine
from training_run.cli import parse_command_line
from training_run.mps import cuda_mps, start_mps

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL_ROUTER = dict(d_model=32, n_heads=2, d_ff=64)


def _with_precision(router: LRNRouter, precision: str) -> None:
    router.config = dataclasses.replace(router.config, precision=precision)


def test_bf16_router_keeps_fp32_parameters_and_outputs() -> None:
    """Logits and values come out fp32 and within bf16's rounding of fp32's; gradients reach the fp32
    parameters; the body did run in bf16 (the outputs differ from fp32's)."""
    torch.manual_seed(0)
    router = LRNRouter((1, 28, 28), 10, 62, 6, RouterConfig(**SMALL_ROUTER))
    bf16 = copy.deepcopy(router)
    _with_precision(bf16, "bf16")
    batch = 16
    x = RouterInput(
        image=torch.rand(batch, 1, 28, 28),
        task=torch.randint(0, 10, (batch,)),
        route=torch.randint(0, 63, (batch, 6)),
        mask=torch.rand(batch, 62) > 0.3,
    )
    logits, values = router.forward_tensors(x.image, x.task, x.route, x.mask)
    logits16, values16 = bf16.forward_tensors(x.image, x.task, x.route, x.mask)
    assert logits16.dtype == values16.dtype == torch.float32
    assert torch.equal(logits16 < -1e7, ~x.mask)
    valid = x.mask
    torch.testing.assert_close(logits16[valid], logits[valid], rtol=0, atol=0.05)
    torch.testing.assert_close(values16, values, rtol=0, atol=0.05)
    assert not torch.equal(logits16[valid], logits[valid])  # bf16 arithmetic did run
    (logits16[valid].sum() + values16.sum()).backward()
    grads = [p.grad for p in bf16.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 for g in grads)
    assert all(p.dtype == torch.float32 for p in bf16.parameters())


def _twin(model: LRNMaskablePPO) -> LRNMaskablePPO:
    twin = copy.copy(model)
    twin.policy = copy.deepcopy(model.policy)
    twin.rollout_buffer = copy.deepcopy(model.rollout_buffer)
    twin._minibatch_update = None
    twin.set_logger(Logger(folder=None, output_formats=[]))
    return twin


def test_bf16_update_moves_the_router_as_fp32_does(fake_data_root: Path) -> None:
    """One fused PPO update (2 epochs of 2 minibatches) on the same rollout from the same state: the bf16
    router's parameter step points where fp32's does and is as long, and the logged losses agree."""
    env = RoutingSB3VecEnv(
        "RoutingMNIST-v0", num_envs=8, max_depth=4, data_root=fake_data_root, download=False, duplicates=2,
        device="cpu", seed=0, max_pairs=256, bonus_weight=0.5,
    )  # fmt: skip
    model = LRNMaskablePPO(
        RouterPolicy, env, n_steps=4, batch_size=16, n_epochs=2, seed=0, device="cpu", learning_rate=3e-3,
        policy_kwargs=SMALL_ROUTER,
    )  # fmt: skip
    model.learn(8 * 4)  # a rollout and its update: the next update's ratios are off 1
    fp32, bf16 = _twin(model), _twin(model)
    _with_precision(bf16.policy.router, "bf16")
    before = torch.cat([p.detach().flatten() for p in model.policy.parameters()])
    steps = {}
    for name, twin in (("fp32", fp32), ("bf16", bf16)):
        torch.manual_seed(1)  # the same minibatches
        twin.train()
        assert twin._minibatch_update is not None
        steps[name] = torch.cat([p.detach().flatten() for p in twin.policy.parameters()]) - before
    cosine = torch.nn.functional.cosine_similarity(steps["fp32"], steps["bf16"], dim=0)
    ratio = steps["bf16"].norm() / steps["fp32"].norm()
    assert cosine > 0.9 and 0.8 < ratio < 1.25, (float(cosine), float(ratio))
    logged, expected = bf16.logger.name_to_value, fp32.logger.name_to_value
    for key in ("train/policy_gradient_loss", "train/value_loss", "train/entropy_loss"):
        assert logged[key] == pytest.approx(expected[key], rel=0.05, abs=2e-3), key


def test_bf16_router_learns_min_mtl(fake_data_root: Path) -> None:
    """tests/test_agents.py's test_lrn_learns_min_mtl with the router in bf16, built as train.py builds it
    from ``--router-precision bf16``: from chance (1 in 5) to >= 0.6 test accuracy within 60 batches of 16,
    the band fp32 reaches (0.78-0.99 over seeds 0-4)."""
    config, _, _ = parse_command_line(["--router-precision", "bf16"])
    assert config.router.precision == "bf16"
    kwargs = dict(
        data_root=fake_data_root, download=False, device="cpu", lr_decay=1.0, duplicates=2, max_depth=2,
        lr=1e-3, seed=1, bonus_weight=0.0,
    )  # fmt: skip
    env = RoutingSB3VecEnv("min", num_envs=16, **kwargs)
    test_config = RoutingConfig(benchmark="min", split="test", max_pairs=100, **kwargs)
    test_engine, bench = make_engine(test_config, batch_size=256, pool=env.engine.pool)
    router = RouterConfig(d_model=64, n_heads=4, d_ff=128, precision="bf16")
    trainer = ALGORITHMS["maskable_ppo"].build(env, seed=1, agent=AgentConfig(), router=router)
    assert trainer.model.policy.router.config.precision == "bf16"
    before = evaluate(trainer.act, test_engine, bench.n_tasks, bench.n_classes)
    trainer.learn_epoch(60, lambda n: None)
    after = evaluate(trainer.act, test_engine, bench.n_tasks, bench.n_classes)
    assert before["test_accuracy"] < 0.4
    assert after["test_accuracy"] >= 0.6, after["test_accuracy"]


# --- CUDA MPS -------------------------------------------------------------------------------------------

FAKE_CONTROL = """#!/bin/sh
# A stand-in for nvidia-cuda-mps-control: -d starts "the daemon" (a file) unless START_FAILS is set; a
# command on stdin needs it running; every call is logged.
dir=$(dirname "$0")
if [ "$1" = "-d" ]; then
    echo "-d" >> "$dir/calls"
    if [ -n "$START_FAILS" ]; then echo "An instance of this daemon is already running" >&2; exit 1; fi
    touch "$dir/running"; exit 0
fi
read command
echo "$command" >> "$dir/calls"
[ -f "$dir/running" ] || { echo "Cannot find MPS control daemon process" >&2; exit 1; }
[ "$command" = "quit" ] && rm "$dir/running"
exit 0
"""


@pytest.fixture
def fake_control(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder on PATH, alone, holding a fake ``nvidia-cuda-mps-control``; ``calls`` logs its calls."""
    (tmp_path / "nvidia-cuda-mps-control").write_text(FAKE_CONTROL)
    (tmp_path / "nvidia-cuda-mps-control").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    return tmp_path


def _calls(folder: Path) -> list[str]:
    calls = folder / "calls"
    return calls.read_text().split() if calls.exists() else []


def test_mps_falls_back_to_time_slicing_without_its_control_binary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no nvidia-cuda-mps-control
    lines: list[str] = []
    with cuda_mps(True, say=lines.append) as state:
        assert not state.active and not state.started
    assert len(lines) == 1 and "not available" in lines[0] and "time slicing" in lines[0]


def test_mps_starts_its_daemon_and_stops_it(fake_control: Path) -> None:
    lines: list[str] = []
    with cuda_mps(True, say=lines.append) as state:
        assert state.active and state.started and (fake_control / "running").exists()
        assert _calls(fake_control) == ["get_server_list", "-d", "get_server_list"]
    assert _calls(fake_control)[-1] == "quit" and not (fake_control / "running").exists()
    assert len(lines) == 1 and "started" in lines[0]


def test_mps_reuses_a_running_daemon_and_leaves_it_running(fake_control: Path) -> None:
    (fake_control / "running").touch()
    lines: list[str] = []
    with cuda_mps(True, say=lines.append) as state:
        assert state.active and not state.started
    assert _calls(fake_control) == ["get_server_list"]  # no -d, no quit
    assert (fake_control / "running").exists()
    assert len(lines) == 1 and "runs already" in lines[0]


def test_mps_that_fails_to_start_or_is_off_falls_back(
    fake_control: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("START_FAILS", "1")
    state = start_mps(True)
    assert not state.active and not state.started
    assert "did not start" in state.message and "already running" in state.message
    assert "time slicing" in state.message
    monkeypatch.delenv("START_FAILS")
    (fake_control / "calls").unlink()
    off = start_mps(False)
    assert not off.active and "--no-mps" in off.message and _calls(fake_control) == ["get_server_list"]


def test_mps_off_hides_a_running_daemon_from_the_runs(
    fake_control: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CUDA process joins any daemon it finds, so --no-mps beside a running daemon must point the runs
    elsewhere, or its "time slicing" measurement is MPS's (as one H200 measurement was)."""
    (fake_control / "running").touch()
    monkeypatch.delenv("CUDA_MPS_PIPE_DIRECTORY", raising=False)
    lines: list[str] = []
    with cuda_mps(False, say=lines.append) as state:
        hidden = os.environ["CUDA_MPS_PIPE_DIRECTORY"]
        assert not state.active and Path(hidden).is_dir() and not any(Path(hidden).iterdir())
    assert "CUDA_MPS_PIPE_DIRECTORY" not in os.environ and not Path(hidden).exists()
    assert (fake_control / "running").exists() and "quit" not in _calls(fake_control)
    assert len(lines) == 1 and "pointed away" in lines[0]


# --- torch.compile ----------------------------------------------------------------------------------------


def _compile_env(root: Path, compile: bool) -> RoutingSB3VecEnv:
    return RoutingSB3VecEnv(
        "RoutingMNIST-v0", num_envs=8, max_depth=4, data_root=root, download=False, duplicates=2,
        device="cpu", seed=0, max_pairs=256, bonus_weight=0.5, dispatch="gathered", compile=compile,
    )  # fmt: skip


def test_compiled_programs_compute_what_the_eager_ones_do(
    fake_data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--compile`` as train.py's trainer builds it: the pool's forward, the router's rollout step and the
    PPO losses go through torch.compile, and a batch (its rollout, the pool's step, a PPO update of 2
    epochs) gives what the eager programs give. Traced with the ``aot_eager`` backend (inductor's graph
    capture and autograd without its code generation, minutes on this CPU); tests/test_gpu.py compiles
    with inductor."""
    monkeypatch.setattr(compiling, "BACKEND", "aot_eager")
    agent = AgentConfig(minibatch=2, ppo_epochs=2)
    models = {}
    for compile in (False, True):
        env = _compile_env(fake_data_root, compile)
        trainer = ALGORITHMS["maskable_ppo"].build(
            env, seed=0, agent=agent, router=RouterConfig(**SMALL_ROUTER)
        )
        trainer.learn_epoch(1, lambda n: None)
        models[compile] = trainer.model
    eager, compiled = models[False], models[True]
    assert compiled._episode_program.sample.active and compiled._minibatch_update.losses.active
    assert compiled.env.engine.pool_step.forward.active
    assert not eager._episode_program.sample.active and not eager.env.engine.pool_step.forward.active
    buffers = eager.rollout_buffer, compiled.rollout_buffer
    assert torch.equal(buffers[0].t_actions, buffers[1].t_actions)  # the same routes, drawn the same
    for name in ("t_log_probs", "t_values", "t_rewards", "t_advantages"):
        torch.testing.assert_close(getattr(buffers[1], name), getattr(buffers[0], name), rtol=1e-5, atol=1e-6)
    for p, q in zip(compiled.env.engine.pool.parameters(), eager.env.engine.pool.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    # Adam turns a rounding difference where a gradient is ~0 into a step of up to lr per update
    for p, q in zip(compiled.policy.parameters(), eager.policy.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=3 * float(eager.lr_schedule(1.0)))
    logged, expected = compiled.logger.name_to_value, eager.logger.name_to_value
    for key in ("train/policy_gradient_loss", "train/value_loss", "train/entropy_loss"):
        assert logged[key] == pytest.approx(expected[key], rel=1e-4, abs=1e-6), key


def test_a_failed_compile_says_so_in_one_line_and_runs_eagerly(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """No compiler at compile time, or a compile error at the first call: one warning line on stderr, and
    the function's own result from then on."""

    def double(x: torch.Tensor) -> torch.Tensor:
        return x * 2

    def no_backend(fn, **kwargs):
        raise RuntimeError("inductor needs a C++ compiler\nmore detail")

    monkeypatch.setattr(torch, "compile", no_backend)
    program = compiling.Compiled(double, True, "the test's program")
    assert not program.active and torch.equal(program(torch.ones(2)), torch.full((2,), 2.0))
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "warning: torch.compile failed for the test's program (RuntimeError: inductor needs a C++ compiler); "
        "it runs eagerly"
    ]

    calls = []

    def fails_at_first_call(fn, **kwargs):
        def compiled(*args):
            calls.append(args)
            raise torch._dynamo.exc.BackendCompilerFailed(double, RuntimeError("lowering failed"), None)

        return compiled

    monkeypatch.setattr(torch, "compile", fails_at_first_call)
    program = compiling.Compiled(double, True, "the test's program")
    assert program.active
    for _ in range(2):
        assert torch.equal(program(torch.ones(2)), torch.full((2,), 2.0))
    assert len(calls) == 1 and not program.active  # not tried again
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "BackendCompilerFailed" in err[0] and "runs eagerly" in err[0]

    off = compiling.Compiled(double, False, "the test's program")
    assert not off.active and capsys.readouterr().err == ""
