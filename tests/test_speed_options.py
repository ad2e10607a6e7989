"""The speed options compute what the default code computes: the router in bf16 (``--router-precision``)
keeps fp32 parameters and outputs, updates as fp32 does and learns as fp32 does. On the CPU (bf16 autocast
is torch's on the CPU too); tests/test_gpu.py runs the same on a GPU."""

from __future__ import annotations

import copy
import dataclasses
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
from routing_env import RoutingConfig, RoutingSB3VecEnv, make_engine
from training_run.cli import parse_command_line

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
