"""The GPU-only paths: the pool's training step and the router's inference forward as CUDA graphs must
compute what the eager code computes, and train.py must run on a GPU. Skipped where CUDA is absent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import train
from agents.config import RouterConfig
from agents.policy import RouterPolicy
from routing_env import RoutingConfig, RoutingSB3VecEnv, make_engine
from routing_env.modules import ModulePool, TensorType, lrn_pool_specs
from routing_env.network import SYNC_FREE_MODES, RoutePlan, run_routes
from routing_env.rules import RouteRules
from routing_env.static_route import static_network_route

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def full_precision():
    """Full fp32 matmuls, so graph and eager differ only by summation order."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("freeze_unused", [True, False])
@pytest.mark.parametrize("dispatch", SYNC_FREE_MODES)
def test_graphed_pool_step_matches_eager(
    data_root: Path, freeze_unused: bool, dispatch: str, precision: str
) -> None:
    kwargs = dict(
        benchmark="mnist", data_root=data_root, download=False, device="cuda", duplicates=3, max_depth=5,
        batch_size=32, max_pairs=640, seed=0, lr=1e-3, freeze_unused=freeze_unused, dispatch=dispatch,
        precision=precision,
    )  # fmt: skip
    tolerance = {"rtol": 1e-4, "atol": 1e-5} if precision == "fp32" else {"rtol": 2e-2, "atol": 2e-2}
    engines = [make_engine(RoutingConfig(cuda_graph=g, **kwargs))[0] for g in (True, False)]
    assert engines[0].pool_step.cuda_graph and not engines[1].pool_step.cuda_graph
    gen = torch.Generator(device="cuda").manual_seed(0)
    for _ in range(6):  # 2 eager warm-up batches, the capture, 3 replays
        finals = []
        for engine in engines:
            engine.begin_batch()
        for _ in range(5):
            mask = engines[0].action_mask()
            assert torch.equal(mask, engines[1].action_mask())
            actions = torch.multinomial(mask.float(), 1, generator=gen).squeeze(1)
            outs = [engine.step(actions) for engine in engines]
        finals = [out.final for out in outs]
        torch.testing.assert_close(finals[0]["loss"], finals[1]["loss"], **tolerance)
        torch.testing.assert_close(finals[0]["step_rewards"], finals[1]["step_rewards"], **tolerance)
    # Adam divides by the gradient's running scale, so where a gradient is ~0 a summation-order difference
    # moves a weight by up to ~lr: compare weights to a few lr.
    for a, b in zip(engines[0].pool.parameters(), engines[1].pool.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=5e-3)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_dispatch_modes_agree_on_the_gpu(precision: str) -> None:
    """cuDNN's and cuBLAS's kernels per mode compute one function: logits and pool gradients of every
    sync-free mode against dense fp32 (bf16: within its rounding)."""
    image = TensorType("image", (3, 12, 12))
    pool = ModulePool(lrn_pool_specs((3, 12, 12), 5, 4, conv_channels=8, fc_width=32), image, seed=0).cuda()
    with torch.no_grad():
        for bank in pool.banks:
            if bank.spec.norm is not None:
                bank.norm_weight.uniform_(0.5, 1.5)
    rules = RouteRules(pool, 6, torch.device("cuda"))
    plan = RoutePlan(pool, rules.bank_steps)
    gen = torch.Generator(device="cuda").manual_seed(0)
    route = rules.random_routes(64, gen)
    images = torch.randint(0, 256, (64, 3, 12, 12), dtype=torch.uint8, device="cuda", generator=gen)
    weights = torch.randn(64, 5, device="cuda", generator=gen)

    def run(mode: str, bf16: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        pool.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            logits = run_routes(plan, rules.logits_type, images, route, mode).float()
        (logits * weights).sum().backward()
        return logits.detach(), [p.grad.clone() for p in pool.parameters()]

    reference, ref_grads = run("dense", False)
    bf16 = precision == "bf16"
    for mode in SYNC_FREE_MODES:
        logits, grads = run(mode, bf16)
        torch.testing.assert_close(
            logits, reference, rtol=5e-2 if bf16 else 1e-4, atol=5e-2 if bf16 else 1e-5
        )
        for name, grad, ref in zip(dict(pool.named_parameters()), grads, ref_grads, strict=True):
            if not bf16:
                torch.testing.assert_close(grad, ref, rtol=1e-4, atol=1e-5, msg=f"{mode} {name}")
            elif ref.norm() > 1e-3:  # bf16 rounding: the same direction (a conv bias before a norm gets ~0)
                cosine = F.cosine_similarity(grad.flatten(), ref.flatten(), dim=0)
                assert cosine > 0.95, f"{mode} {name}: cosine {float(cosine):.4f}"


READINGS = {"decoder_queries": "valid", "normalize_instance": True, "critic_encoder": "separate"}


# The priors not in the paper: the static start and a task prior on the head step, both indexed by the step.
PRIORS = {"static_start": 5.0, "task_prior_std": 2.0, "task_prior_steps": "head"}


@pytest.mark.parametrize("options", [{}, READINGS, PRIORS], ids=["paper", "readings", "priors"])
def test_graphed_router_forward_matches_eager(data_root: Path, options: dict) -> None:
    env = RoutingSB3VecEnv(
        "RoutingMNIST-v0", num_envs=64, data_root=data_root, download=False, device="cuda", duplicates=3,
        max_pairs=640, seed=0,
    )  # fmt: skip
    config = RouterConfig(d_model=64, n_heads=4, d_ff=128, **options)
    route = static_network_route(env.engine.pool, int(env.observation_space["task"].n), env.engine.max_depth)
    kwargs = {**vars(config), "static_route": route.tolist()} if config.static_start else vars(config)
    policy = RouterPolicy(env.observation_space, env.action_space, lambda _: 1e-3, **kwargs).cuda()
    policy.set_training_mode(False)
    env.reset()
    obs = env.tensor_observation()
    for _ in range(4):  # warm-up, capture, replay
        with torch.no_grad():
            graphed = policy.get_distribution(obs).distribution.logits
            values = policy.predict_values(obs)
    eager = policy.get_distribution(obs).distribution.logits  # autograd on: the eager path
    torch.testing.assert_close(graphed, eager.detach(), rtol=1e-4, atol=1e-4)
    assert policy.router._graphed.entries, "no graph was captured"
    assert values.shape == (64, 1)


def test_train_runs_on_the_gpu(data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = [
        "--device", "cuda", "--epochs", 2, "--limit-train", 2048, "--limit-test", 500, "--duplicates", 3,
        "--val-fraction", 0.1, "--no-progress", "--data-root", data_root, "--no-download", "--out", out,
    ]  # fmt: skip
    assert train.main([str(a) for a in argv]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]
    assert all(0 <= r["test_accuracy"] <= 1 and 0 <= r["val_accuracy"] <= 1 for r in records)
    assert records[-1]["train_invalid_actions"] == 0


def test_sharing_options_run_on_the_gpu(data_root: Path, tmp_path: Path) -> None:
    """The static start, the task prior on the head step and the per-task bonus, through train.py on a GPU
    (the router's forward and the pool's step as CUDA graphs)."""
    out = tmp_path / "run"
    argv = [
        "--device", "cuda", "--epochs", 1, "--limit-train", 1024, "--limit-test", 300, "--duplicates", 3,
        "--static-start", 5, "--task-prior-steps", "head", "--bonus-scope", "task", "--no-progress",
        "--data-root", data_root, "--no-download", "--out", out,
    ]  # fmt: skip
    assert train.main([str(a) for a in argv]) == 0
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["train_invalid_actions"] == 0 and record["train_bonus"] > 0
    assert 0 <= record["route_overlap"] <= 1 and record["routes_per_task"] >= 1
    assert (out / "route_statistics.png").exists()
