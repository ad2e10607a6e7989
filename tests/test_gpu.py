"""The GPU-only paths: the pool's training step, the router's inference forward, a batch's rollout and a
PPO minibatch update as CUDA graphs must compute what the eager code computes, the router must learn
through them, and train.py must run on a GPU. Skipped where CUDA is absent.

Run on a GPU machine from the repository root: ``python -m pytest tests/test_gpu.py -q``."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import train
from agents.config import RouterConfig
from agents.evaluation import evaluate
from agents.policy import RouterPolicy
from agents.rollout import LRNMaskablePPO
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
    for mode in SYNC_FREE_MODES:
        logits, grads = run(mode, precision == "bf16")
        bf16 = precision == "bf16" or mode == "grouped_gemm"  # grouped_gemm's products are bf16 always
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
    """The static start, the task prior on the head step, the per-task bonus and a head per task, through
    train.py on a GPU (the router's forward and the pool's step as CUDA graphs)."""
    out = tmp_path / "run"
    argv = [
        "--device", "cuda", "--epochs", 1, "--limit-train", 1024, "--limit-test", 300, "--duplicates", 3,
        "--static-start", 5, "--task-prior-steps", "head", "--bonus-scope", "task", "--task-heads",
        "--no-progress", "--data-root", data_root, "--no-download", "--out", out,
    ]  # fmt: skip
    assert train.main([str(a) for a in argv]) == 0
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["train_invalid_actions"] == 0 and record["train_bonus"] > 0
    assert 0 <= record["route_overlap"] <= 1 and record["routes_per_task"] >= 1
    assert (out / "route_statistics.png").exists()


def test_task_heads_mask_on_the_gpu(data_root: Path) -> None:
    """``task_heads`` on the GPU with the pool's step as a CUDA graph: random valid routes end each task in
    its own head (duplicate t % 3 of 3) and only there; without it they end in other tasks' heads too."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    foreign = {}
    for task_heads in (True, False):
        engine, _ = make_engine(
            RoutingConfig(
                benchmark="mnist", data_root=data_root, download=False, device="cuda", duplicates=3,
                max_depth=5, batch_size=64, max_pairs=640, seed=0, task_heads=task_heads,
            )
        )  # fmt: skip
        pool = engine.pool
        head = torch.tensor([s.out_type.name == "logits" for s in pool.specs], device="cuda")[
            pool.action_bank[:-1]
        ]  # (modules,)
        foreign[task_heads] = 0
        for _ in range(4):  # eager warm-up, the capture, replays
            engine.begin_batch()
            for _ in range(engine.max_depth):
                mask = engine.action_mask()
                out = engine.step(torch.multinomial(mask.float(), 1, generator=gen).squeeze(1))
            last, tasks = out.final["route"][:, -1], out.final["task"]
            assert head[last].all()
            foreign[task_heads] += int((pool.action_dup[last] != tasks % 3).sum())
    assert foreign[True] == 0 and foreign[False] > 0


# --- the fused rollout and PPO update as CUDA graphs ------------------------------------------------------

ROUTER_64 = dict(d_model=64, n_heads=4, d_ff=128)


def _mnist_env(root: Path, num_envs: int = 64, device: str = "cuda") -> RoutingSB3VecEnv:
    return RoutingSB3VecEnv(
        "RoutingMNIST-v0", num_envs=num_envs, max_depth=5, data_root=root, download=False, device=device,
        duplicates=3, max_pairs=2048, seed=0, bonus_weight=0.5,
    )  # fmt: skip


def _model(env: RoutingSB3VecEnv, router_precision: str = "fp32", **kwargs) -> LRNMaskablePPO:
    """LRNMaskablePPO as train.py's trainer builds it (one rollout per batch, a fused Adam, one PPO epoch),
    with a smaller router (in ``router_precision``)."""
    depth = env.engine.max_depth
    defaults = dict(
        n_steps=depth, batch_size=env.num_envs * depth // 2, n_epochs=1, seed=0, learning_rate=1e-3
    )
    policy_kwargs = {**ROUTER_64, "precision": router_precision, "optimizer_kwargs": {"fused": True}}
    return LRNMaskablePPO(
        RouterPolicy, env, device=env.engine.device, policy_kwargs=policy_kwargs, **{**defaults, **kwargs}
    )


def test_graphed_ppo_update_matches_eager(data_root: Path) -> None:
    """The same rollout, the same minibatches: the captured update (2 eager warm-ups, the capture, then
    replays) moves the router as the same program run eagerly does, and logs the same losses."""
    env = _mnist_env(data_root)
    graphed, eager = _model(env, n_epochs=2), _model(env, n_epochs=2, cuda_graph=False)
    eager.policy.load_state_dict(graphed.policy.state_dict())
    graphed.learn(env.num_envs * env.engine.max_depth)  # a rollout to update on (and a first update)
    eager.policy.load_state_dict(graphed.policy.state_dict())
    eager.policy.optimizer.load_state_dict(copy.deepcopy(graphed.policy.optimizer.state_dict()))
    eager.rollout_buffer = copy.deepcopy(graphed.rollout_buffer)
    eager.set_logger(graphed.logger.__class__(folder=None, output_formats=[]))
    for _ in range(4):
        for model in (graphed, eager):
            torch.manual_seed(0)  # the same minibatches
            model.train()
        for key in ("train/policy_gradient_loss", "train/value_loss", "train/entropy_loss", "train/loss"):
            assert graphed.logger.name_to_value[key] == pytest.approx(
                eager.logger.name_to_value[key], rel=1e-4, abs=1e-6
            ), key
    assert graphed._minibatch_update.program.captured == 1
    assert eager._minibatch_update.program.captured == 0
    # Adam divides by the gradient's running scale, so where a gradient is ~0 a summation-order difference
    # moves a weight by up to ~lr: compare weights to a few lr.
    for p, q in zip(graphed.policy.parameters(), eager.policy.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=5e-3)


def test_graphed_rollout_stores_what_the_steps_give(data_root: Path) -> None:
    """Every rollout of a captured episode program (2 eager warm-ups, the capture, then replays) against a
    twin env stepped one step at a time with the stored actions: the same observations and rewards, the
    policy's own values and log-probabilities; replays draw fresh noise; the samples follow the policy."""
    env, twin = _mnist_env(data_root), _mnist_env(data_root)
    model = _model(env)
    _, callback = model._setup_learn(10**6, None)
    twin.seed(0)
    twin.reset()
    depth = env.engine.max_depth
    log_probs, entropies = [], []
    for _ in range(5):
        assert model.collect_rollouts(env, callback, model.rollout_buffer, depth)
        buffer = model.rollout_buffer
        for k in range(depth):
            obs = twin.tensor_observation()
            for key, value in obs.items():
                assert torch.equal(buffer.obs[key][k].reshape(value.shape), value), (k, key)
            with torch.no_grad():
                values, log_prob, entropy = model.policy.evaluate_actions(obs, buffer.t_actions[k])
            torch.testing.assert_close(buffer.t_values[k], values.flatten(), rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(buffer.t_log_probs[k], log_prob, rtol=1e-4, atol=1e-4)
            log_probs.append(log_prob)
            entropies.append(entropy)
            _, reward, done, final = twin.step_tensors(buffer.t_actions[k])
        torch.testing.assert_close(buffer.t_rewards, final["step_rewards"].t(), rtol=1e-4, atol=1e-4)
    assert model._episode_program.program.captured == 1
    assert env.engine.stats()["train_invalid_actions"] == 0
    # E[log pi(a)] = -H(pi) when a ~ pi: 5 * 5 * 64 samples, each log-probability's spread about 1
    mean_log_prob, mean_entropy = torch.cat(log_probs).mean(), torch.cat(entropies).mean()
    assert abs(float(mean_log_prob + mean_entropy)) < 0.15
    # A replay draws new noise: the same first step (same images, tasks, masks, router) samples anew.
    firsts = []
    for _ in range(2):
        env.engine.seed(7)
        env.reset()
        assert model.collect_rollouts(env, callback, model.rollout_buffer, depth)
        buffer = model.rollout_buffer
        firsts.append(
            {"actions": buffer.t_actions[0].clone(), **{k: v[0].clone() for k, v in buffer.obs.items()}}
        )
    for key in buffer.obs:
        assert torch.equal(firsts[0][key], firsts[1][key]), key
    assert not torch.equal(firsts[0]["actions"], firsts[1]["actions"])


def _min_mtl(root: Path):
    kwargs = dict(
        data_root=root, download=False, device="cuda", lr_decay=1.0, duplicates=2, max_depth=2, lr=1e-3,
        seed=1, bonus_weight=0.0,
    )  # fmt: skip
    env = RoutingSB3VecEnv("min", num_envs=16, **kwargs)
    config = RoutingConfig(benchmark="min", split="test", max_pairs=100, **kwargs)
    test_engine, bench = make_engine(config, batch_size=256, pool=env.engine.pool)
    return env, test_engine, bench


@pytest.mark.parametrize(
    "flags",
    [
        {},
        {"cuda_graph": False},
        {"fused_rollout": False, "fused_update": False},
        {"router_precision": "bf16"},
    ],
    ids=["graphed", "eager", "sb3_reference", "router_bf16"],
)
def test_router_learns_min_mtl_through_the_graphs(fake_data_root: Path, flags: dict) -> None:
    """tests/test_agents.py's test_lrn_learns_min_mtl on the GPU: fake MIN-MTL, where the image alone fixes
    the label, from chance (1 in 5) to >= 0.6 within 60 batches of 16, the same through the graphs, the
    same programs run eagerly, and SB3's step-by-step collection and train()."""
    env, test_engine, bench = _min_mtl(fake_data_root)
    model = _model(env, seed=1, batch_size=16 * 2, **flags)

    def act(obs: dict[str, torch.Tensor]) -> torch.Tensor:
        return model.policy._predict(obs, deterministic=True).reshape(-1)

    before = evaluate(act, test_engine, bench.n_tasks, bench.n_classes)
    model.learn(60 * 16 * 2)
    after = evaluate(act, test_engine, bench.n_tasks, bench.n_classes)
    assert before["test_accuracy"] < 0.4
    assert after["test_accuracy"] >= 0.6, after["test_accuracy"]
    assert env.engine.stats()["train_invalid_actions"] == 0.0
    if flags.get("cuda_graph", True) and flags.get("fused_rollout", True):
        assert model._episode_program.program.captured == 1
        assert model._minibatch_update.program.captured == 1


def test_graphed_model_saves_loads_and_continues(data_root: Path, tmp_path: Path) -> None:
    """A model trained through the graphs (its optimizer made capturable, the learning rate a device
    tensor) saves as a plain one: it loads and trains on, on the GPU (captured anew) and on the CPU."""
    env = _mnist_env(data_root, num_envs=32)
    model = _model(env)
    batch = env.num_envs * env.engine.max_depth
    model.learn(4 * batch)
    assert model._minibatch_update.capture and model.policy.optimizer.param_groups[0]["capturable"]
    model.save(tmp_path / "agent.zip")
    loaded = LRNMaskablePPO.load(tmp_path / "agent.zip", env=env, device="cuda")
    for p, q in zip(model.policy.parameters(), loaded.policy.parameters(), strict=True):
        assert torch.equal(p, q)
    group = loaded.policy.optimizer.param_groups[0]
    assert isinstance(group["lr"], float) and not group["capturable"]
    loaded.learn(4 * batch, reset_num_timesteps=False)
    assert loaded._minibatch_update.program.captured == 1 and loaded._episode_program.program.captured == 1
    cpu_env = _mnist_env(data_root, num_envs=32, device="cpu")
    on_cpu = LRNMaskablePPO.load(tmp_path / "agent.zip", env=cpu_env, device="cpu")
    on_cpu.learn(batch)
    assert all(torch.isfinite(p).all() for p in on_cpu.policy.parameters())


def test_compiled_programs_replay_in_cuda_graphs_as_the_eager_ones_do(data_root: Path) -> None:
    """``compile=True`` with inductor: the pool's forward, the router's rollout step and the PPO losses
    compile (no fallback) and are captured in the CUDA graphs (2 eager warm-ups compile, then the
    capture), and 4 batches give the rollouts, pool losses and router that the uncompiled graphs give."""
    models = {}
    for compile in (False, True):
        env = RoutingSB3VecEnv(
            "RoutingMNIST-v0", num_envs=64, max_depth=5, data_root=data_root, download=False, device="cuda",
            duplicates=3, max_pairs=2048, seed=0, bonus_weight=0.5, compile=compile,
        )  # fmt: skip
        model = _model(env, torch_compile=compile, cuda_graph=True)
        model.learn(4 * 64 * 5)
        models[compile] = model
    eager, compiled = models[False], models[True]
    assert compiled._episode_program.sample.active and compiled._minibatch_update.losses.active
    assert compiled.env.engine.pool_step.forward.active
    assert compiled._episode_program.program.captured == 1
    assert compiled._minibatch_update.program.captured == 1
    assert compiled.env.engine.pool_step._graph is not None
    buffers = eager.rollout_buffer, compiled.rollout_buffer
    same = (buffers[0].t_actions == buffers[1].t_actions).float().mean()
    assert same > 0.99, float(same)  # the same draws; a fused kernel's rounding may flip a near tie
    torch.testing.assert_close(buffers[1].t_values, buffers[0].t_values, rtol=1e-3, atol=1e-3)
    stats = eager.env.engine.stats(), compiled.env.engine.stats()
    assert stats[1]["train_loss"] == pytest.approx(stats[0]["train_loss"], rel=1e-2)
    for p, q in zip(compiled.policy.parameters(), eager.policy.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-2)
