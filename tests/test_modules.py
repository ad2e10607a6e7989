"""The module pool (banks, dispatch modes, the LRN pool's kinds and the step rules) and the reward's pure
functions. No data is needed: everything runs on small random tensors."""

from __future__ import annotations

import math

import pytest
import torch

from routing_env.modules import (
    BANK_MODES,
    BankSpec,
    ModuleBank,
    ModulePool,
    TensorType,
    lrn_pool_specs,
    static_pool_specs,
)
from routing_env.network import RoutePlan, run_routes
from routing_env.rewards import collapse_bonus, final_reward, module_usage_counts, route_bonus
from routing_env.rules import RouteRules

# Many small ops: one intra-op thread is faster on a small shared CPU (fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- bank dispatch: every mode computes the same function ---------------------------------------------

IMG = TensorType("image", (3, 6, 5))
CONV = TensorType("conv", (4, 6, 5))
VEC = TensorType("fc", (7,))
LOGITS = TensorType("logits", (3,))

BANK_CASES = {
    "conv+instance": BankSpec("c", "conv", IMG, CONV, 3, "instance"),
    "conv": BankSpec("c", "conv", CONV, CONV, 3, None),
    "conv->linear+layer": BankSpec("f", "linear", CONV, VEC, 3, "layer"),
    "linear+layer": BankSpec("f", "linear", VEC, VEC, 4, "layer"),
    "linear head": BankSpec("h", "linear", VEC, LOGITS, 3, None),
    "one duplicate": BankSpec("c", "conv", IMG, CONV, 1, "instance"),
}


def _run_bank(
    bank: ModuleBank, h: torch.Tensor, dup: torch.Tensor, active: torch.Tensor, mode: str, seed: int
):
    """Forward in ``mode`` and backward a random linear loss over the ACTIVE rows only (inactive rows are
    documented as meaningless); returns the output and the gradients of the input and every parameter."""
    bank.zero_grad(set_to_none=True)
    x = h.clone().requires_grad_(True)
    out = bank(x, dup, active, mode)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    (out[active] * weights[active]).sum().backward()
    grads = {name: p.grad.clone() for name, p in bank.named_parameters()}
    return out.detach(), x.grad.clone(), grads


@pytest.mark.parametrize("case", list(BANK_CASES))
@pytest.mark.parametrize("trial", range(3))
def test_dense_and_grouped_agree(case: str, trial: int) -> None:
    spec = BANK_CASES[case]
    gen = torch.Generator().manual_seed(100 * trial + len(case))
    bank = ModuleBank(spec, gen)
    if spec.norm is not None:  # the norm's affine parameters start at 1 / 0: make them matter
        with torch.no_grad():
            bank.norm_weight.uniform_(0.5, 1.5, generator=gen)
            bank.norm_bias.uniform_(-0.5, 0.5, generator=gen)
    batch, d = 11, spec.duplicates
    h = torch.randn(batch, *spec.in_type.shape, generator=gen)
    active = torch.rand(batch, generator=gen) < 0.7
    active[:2] = torch.tensor([True, False])  # at least one active and one inactive sample
    # Active samples never pick the last duplicate (when there are several), so it must get no gradient;
    # inactive samples carry arbitrary (even out-of-range) duplicate ids, which must not matter.
    dup = torch.randint(0, max(d - 1, 1), (batch,), generator=gen)
    dup[~active] = torch.randint(-2, d + 2, (int((~active).sum()),), generator=gen)

    out_d, gx_d, g_d = _run_bank(bank, h, dup, active, "dense", seed=trial)
    out_g, gx_g, g_g = _run_bank(bank, h, dup, active, "grouped", seed=trial)

    assert out_d.shape == out_g.shape == (batch, *spec.out_type.shape)
    assert torch.isfinite(out_d).all() and torch.isfinite(out_g).all()
    torch.testing.assert_close(out_d[active], out_g[active], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx_d, gx_g, rtol=1e-4, atol=1e-5)
    assert not gx_d[~active].any()  # an inactive sample's input gets no gradient
    assert set(g_d) == set(g_g) == {n for n, _ in bank.named_parameters()}
    for name in g_d:
        torch.testing.assert_close(g_d[name], g_g[name], rtol=1e-4, atol=1e-5, msg=f"grad of {name}")
    # convolutions through per-sample weights (one grouped conv; one batched product over patches; one
    # grouped product over the patches of samples sorted by duplicate)
    for mode in ("gathered", "gathered_nhwc", "patches", "grouped_gemm"):
        out_a, gx_a, g_a = _run_bank(bank, h, dup, active, mode, seed=trial)
        torch.testing.assert_close(out_a[active], out_g[active], rtol=1e-5, atol=1e-5, msg=mode)
        torch.testing.assert_close(gx_a, gx_g, rtol=1e-4, atol=1e-5, msg=mode)
        assert not gx_a[~active].any(), mode
        for name in g_a:
            torch.testing.assert_close(
                g_a[name], g_g[name], rtol=1e-4, atol=1e-5, msg=f"{mode} grad of {name}"
            )
    picked = set(dup[active].tolist())
    for j in range(d):
        for name, grads in (("dense", g_d), ("grouped", g_g)):
            if j in picked:
                assert grads["weight"][j].abs().sum() > 0, (name, j)
            else:
                assert not grads["weight"][j].any(), f"{name}: unpicked duplicate {j} got a gradient"
                assert not grads["bias"][j].any(), f"{name}: unpicked duplicate {j} got a gradient"


def test_each_sample_uses_its_own_duplicate() -> None:
    """Against a hand-run reference: sample i's output is duplicate dup[i] applied to h[i]."""
    spec = BANK_CASES["linear+layer"]
    bank = ModuleBank(spec, torch.Generator().manual_seed(0))
    with torch.no_grad():
        bank.norm_weight.uniform_(0.5, 1.5)
    h = torch.randn(6, 7)
    dup = torch.tensor([0, 3, 1, 1, 2, 0])
    active = torch.ones(6, dtype=torch.bool)
    for mode in BANK_MODES:
        out = bank(h, dup, active, mode)
        for i, j in enumerate(dup.tolist()):
            z = torch.nn.functional.layer_norm(h[i] @ bank.weight[j].T + bank.bias[j], (7,))
            ref = torch.relu(z * bank.norm_weight[j] + bank.norm_bias[j])
            torch.testing.assert_close(out[i], ref, rtol=1e-5, atol=1e-5)


def test_bank_rejects_bad_mode_and_spec() -> None:
    bank = ModuleBank(BANK_CASES["linear head"])
    with pytest.raises(ValueError, match="unknown dispatch mode 'fast'"):
        bank(torch.zeros(2, 7), torch.zeros(2, dtype=torch.long), torch.ones(2, dtype=torch.bool), "fast")
    with pytest.raises(ValueError, match="unknown layer"):
        ModuleBank(BankSpec("x", "lstm", VEC, VEC, 1))
    with pytest.raises(ValueError, match="unknown norm"):
        ModuleBank(BankSpec("x", "linear", VEC, VEC, 1, "batch"))
    with pytest.raises(ValueError, match="unknown norm 'layer' for a conv layer"):
        ModuleBank(BankSpec("x", "conv", CONV, CONV, 1, "layer"))


def test_bank_init_is_seeded_and_pytorch_like() -> None:
    spec = BANK_CASES["conv->linear+layer"]
    a = ModuleBank(spec, torch.Generator().manual_seed(3))
    b = ModuleBank(spec, torch.Generator().manual_seed(3))
    c = ModuleBank(spec, torch.Generator().manual_seed(4))
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert not torch.equal(a.weight, c.weight)
    bound = 1 / math.sqrt(4 * 6 * 5)  # U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as nn.Linear
    assert a.weight.abs().max() <= bound and a.weight.abs().max() > 0.9 * bound
    assert torch.equal(a.norm_weight, torch.ones(3, 7)) and torch.equal(a.norm_bias, torch.zeros(3, 7))


# --- the LRN pool ------------------------------------------------------------------------------------

LRN_KINDS = ["input_conv", "hidden_conv", "fc_from_conv", "hidden_fc", "head_from_conv", "head_from_fc"]


@pytest.mark.parametrize(("image_shape", "n_classes"), [((1, 28, 28), 2), ((3, 32, 32), 5), ((3, 84, 84), 5)])
@pytest.mark.parametrize("duplicates", [1, 10])
def test_lrn_pool_specs(image_shape: tuple[int, int, int], n_classes: int, duplicates: int) -> None:
    specs = lrn_pool_specs(image_shape, n_classes, duplicates)
    assert [s.name for s in specs] == LRN_KINDS
    assert all(s.duplicates == duplicates for s in specs)
    c, h, w = image_shape
    image, conv, fc, logits = (
        ("image", image_shape),
        ("conv", (32, h, w)),
        ("fc", (256,)),
        ("logits", (n_classes,)),
    )
    expected = {  # (layer, in type, out type, norm): the paper's section 5.2
        "input_conv": ("conv", image, conv, "instance"),
        "hidden_conv": ("conv", conv, conv, "instance"),
        "fc_from_conv": ("linear", conv, fc, "layer"),
        "hidden_fc": ("linear", fc, fc, "layer"),
        "head_from_conv": ("linear", conv, logits, None),
        "head_from_fc": ("linear", fc, logits, None),
    }
    for s in specs:
        layer, t_in, t_out, norm = expected[s.name]
        assert (s.layer, (s.in_type.name, s.in_type.shape), (s.out_type.name, s.out_type.shape), s.norm) == (
            layer,
            t_in,
            t_out,
            norm,
        ), s.name
        assert s.steps is None
    with pytest.raises(ValueError, match="duplicates must be >= 1"):
        lrn_pool_specs(image_shape, n_classes, 0)


def small_lrn_pool(duplicates: int = 3, seed: int = 0) -> ModulePool:
    specs = lrn_pool_specs((3, 6, 5), 4, duplicates, conv_channels=8, fc_width=16)
    return ModulePool(specs, TensorType("image", (3, 6, 5)), seed=seed)


def test_lrn_pool_parameters_and_tables() -> None:
    d = 3
    pool = small_lrn_pool(d)
    shapes = {  # weight shapes of each bank: (d, out, in, 3, 3) for convs, (d, out, in_flat) for linears
        "input_conv": (d, 8, 3, 3, 3),
        "hidden_conv": (d, 8, 8, 3, 3),
        "fc_from_conv": (d, 16, 8 * 6 * 5),
        "hidden_fc": (d, 16, 16),
        "head_from_conv": (d, 4, 8 * 6 * 5),
        "head_from_fc": (d, 4, 16),
    }
    for bank in pool.banks:
        assert tuple(bank.weight.shape) == shapes[bank.spec.name]
        assert tuple(bank.bias.shape) == (d, shapes[bank.spec.name][1])
        assert hasattr(bank, "norm_weight") == (bank.spec.norm is not None)
    assert pool.n_modules == 6 * d and pool.n_actions == 6 * d + 1 and pool.pass_action == 6 * d
    assert pool.bank_offsets == [0, 3, 6, 9, 12, 15]
    assert pool.module_names[:4] == ["input_conv[0]", "input_conv[1]", "input_conv[2]", "hidden_conv[0]"]
    assert pool.action_names[-1] == "PASS" and len(pool.action_names) == pool.n_actions
    assert [t.name for t in pool.types] == ["image", "conv", "fc", "logits"]
    names = [pool.types[t].name for t in pool.module_in_type.tolist()]
    assert names == [n for n in ["image", "conv", "conv", "fc", "conv", "fc"] for _ in range(d)]
    names = [pool.types[t].name for t in pool.module_out_type.tolist()]
    assert names == [n for n in ["conv", "conv", "fc", "fc", "logits", "logits"] for _ in range(d)]
    assert pool.action_bank.tolist() == [b for b in range(6) for _ in range(d)] + [-1]
    assert pool.action_dup.tolist() == list(range(d)) * 6 + [0]
    # seeded weights
    assert all(torch.equal(p, q) for p, q in zip(pool.parameters(), small_lrn_pool(d).parameters()))
    assert not torch.equal(pool.banks[0].weight, small_lrn_pool(d, seed=1).banks[0].weight)
    with pytest.raises(ValueError, match="at least one bank"):
        ModulePool([], IMG)


@pytest.mark.parametrize("depth", [2, 3, 6])
def test_step_allowed_lrn(depth: int) -> None:
    d = 2
    pool = small_lrn_pool(d)
    allowed = pool.step_allowed(depth)
    assert allowed.shape == (depth, pool.n_actions) and allowed.dtype == torch.bool
    by_kind = {kind: list(range(i * d, (i + 1) * d)) for i, kind in enumerate(LRN_KINDS)}

    def ids(*kinds: str) -> list[int]:
        return sorted(m for k in kinds for m in by_kind[k])

    assert allowed[0].nonzero().flatten().tolist() == ids("input_conv")  # no PASS at step 0
    assert allowed[-1].nonzero().flatten().tolist() == ids("head_from_conv", "head_from_fc")  # no PASS
    for k in range(1, depth - 1):
        hidden = ids("hidden_conv", "fc_from_conv", "hidden_fc")
        assert allowed[k].nonzero().flatten().tolist() == [*hidden, pool.pass_action]
    expected_banks = [[0]] + [[1, 2, 3]] * (depth - 2) + [[4, 5]]
    assert pool.bank_steps(depth) == expected_banks


def test_step_allowed_type_rules_and_bank_steps() -> None:
    """Rules come from types alone: a module reading the image and writing logits never fits; a bank's
    ``steps`` restricts it further; modules writing the image type never stand in the middle."""
    pic = TensorType("image", (1, 4, 4))
    feat = TensorType("feat", (2, 4, 4))
    logits = TensorType("logits", (2,))
    specs = [
        BankSpec("direct_head", "linear", pic, logits, 2),  # image -> logits: neither first nor last
        BankSpec("stem", "conv", pic, feat, 1, "instance"),
        BankSpec("to_image", "conv", feat, pic, 1),  # writes the image type: never allowed
        BankSpec("mid", "conv", feat, feat, 2, steps=(2,)),  # only at step 2
        BankSpec("head", "linear", feat, logits, 1),
    ]
    pool = ModulePool(specs, pic)
    allowed = pool.step_allowed(5)
    # ids: direct_head 0-1, stem 2, to_image 3, mid 4-5, head 6, PASS 7
    assert allowed.int().tolist() == [
        [0, 0, 1, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 1],
        [0, 0, 0, 0, 1, 1, 0, 1],
        [0, 0, 0, 0, 0, 0, 0, 1],
        [0, 0, 0, 0, 0, 0, 1, 0],
    ]
    assert pool.bank_steps(5) == [[1], [], [3], [], [4]]


def test_step_allowed_static_pool() -> None:
    specs = static_pool_specs((1, 8, 8), 2, n_tasks=3)
    pool = ModulePool(specs, TensorType("image", (1, 8, 8)))
    allowed = pool.step_allowed(5)
    # ids: input 0, hidden conv 1, fc 2, hidden fc 3, task heads 4-6, PASS 7
    assert allowed.int().tolist() == [
        [1, 0, 0, 0, 0, 0, 0, 0],
        [0, 1, 0, 0, 0, 0, 0, 1],
        [0, 0, 1, 0, 0, 0, 0, 1],
        [0, 0, 0, 1, 0, 0, 0, 1],
        [0, 0, 0, 0, 1, 1, 1, 0],
    ]


# --- running a batch of routes: stage by stage, each network as if run on its own -----------------------


def cyclic_pool() -> ModulePool:
    """Conv banks between two feature types in both directions: a cycle, so a stage is a step."""
    pic, a, b = TensorType("image", (1, 5, 5)), TensorType("a", (2, 5, 5)), TensorType("b", (3, 5, 5))
    logits = TensorType("logits", (2,))
    specs = [
        BankSpec("stem", "conv", pic, a, 2, "instance"),
        BankSpec("a_to_b", "conv", a, b, 2, "instance"),
        BankSpec("b_to_a", "conv", b, a, 2, None),
        BankSpec("head_a", "linear", a, logits, 2),
        BankSpec("head_b", "linear", b, logits, 2),
    ]
    return ModulePool(specs, pic, seed=0)


ROUTED_POOLS = {  # name: (pool, max_depth)
    "lrn": lambda: (small_lrn_pool(3), 6),
    "static": lambda: (
        ModulePool(static_pool_specs((1, 6, 5), 3, 2, 4, 8), TensorType("image", (1, 6, 5))),
        5,
    ),
    "cyclic": lambda: (cyclic_pool(), 5),
}


def each_network_alone(pool: ModulePool, images: torch.Tensor, route: torch.Tensor) -> torch.Tensor:
    """The definition: each network on its own, module after module (PASS skipped)."""
    rows = []
    for i in range(route.shape[0]):
        h = images[i : i + 1].float() / 255
        for a in route[i].tolist():
            if a < pool.n_modules:
                bank = pool.banks[int(pool.action_bank[a])]
                h = bank(h, pool.action_dup[a : a + 1], torch.ones(1, dtype=torch.bool), "grouped")
        rows.append(h)
    return torch.cat(rows)


def _logits_and_grads(pool: ModulePool, run, weights: torch.Tensor):
    pool.zero_grad(set_to_none=True)
    logits = run()
    (logits * weights).sum().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in pool.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    "mode", ["dense", "gathered", "gathered_nhwc", "patches", "grouped_gemm", "grouped", "compact"]
)
@pytest.mark.parametrize("pool_name", list(ROUTED_POOLS))
def test_run_routes_runs_each_network_as_if_alone(pool_name: str, mode: str) -> None:
    pool, depth = ROUTED_POOLS[pool_name]()
    with torch.no_grad():  # norms' affine parameters away from 1 / 0, so that a mix-up shows
        for bank in pool.banks:
            if bank.spec.norm is not None:
                bank.norm_weight.uniform_(0.5, 1.5)
                bank.norm_bias.uniform_(-0.5, 0.5)
    rules = RouteRules(pool, depth, torch.device("cpu"))
    plan = RoutePlan(pool, rules.bank_steps)
    assert plan.staged == (pool_name != "cyclic")
    gen = torch.Generator().manual_seed(7)
    route = rules.random_routes(24, gen)
    images = torch.randint(0, 256, (24, *pool.image_type.shape), dtype=torch.uint8, generator=gen)
    weights = torch.randn(24, pool.specs[-1].out_type.shape[0], generator=gen)
    logits, grads = _logits_and_grads(
        pool, lambda: run_routes(plan, rules.logits_type, images, route, mode), weights
    )
    reference, ref_grads = _logits_and_grads(pool, lambda: each_network_alone(pool, images, route), weights)
    torch.testing.assert_close(logits, reference, rtol=1e-5, atol=1e-5)
    for name, grad in grads.items():  # a bank no network used may get zeros in the batched modes
        torch.testing.assert_close(grad, ref_grads.get(name, torch.zeros_like(grad)), rtol=1e-4, atol=1e-5)
    assert set(ref_grads) <= set(grads)


def test_random_routes_are_valid_networks() -> None:
    pool = small_lrn_pool(3)
    route = RouteRules(pool, 6, torch.device("cpu")).random_routes(64, torch.Generator().manual_seed(0))
    in_types, out_types = pool.module_in_type.tolist(), pool.module_out_type.tolist()
    for actions in route.tolist():
        modules = [a for a in actions if a != pool.pass_action]
        assert len(set(modules)) == len(modules) and actions[0] != pool.pass_action
        held = 0  # the image
        for a in modules:
            assert in_types[a] == held
            held = out_types[a]
        assert pool.types[held].name == "logits"
    assert len(set(route[:, 1].tolist())) > 5  # spread over the valid actions


def test_route_plan_runs_each_type_changing_bank_once() -> None:
    """LRN banks: 0 input conv, 1 hidden conv, 2 fc_from_conv, 3 hidden fc, 4 head_from_conv, 5 head_from_fc.
    Stages: the input conv; up to 4 hidden convs; what leaves conv features (once); up to 3 hidden FCs (the
    first FC step is 2); the FC head. A type keeps at most as many modules as its banks have duplicates."""
    expected = {
        4: [[0], [1], [1], [1], [1], [2, 4], [3], [3], [3], [5]],
        2: [[0], [1], [1], [2, 4], [3], [3], [5]],
    }
    for d, stages in expected.items():
        assert RoutePlan(small_lrn_pool(d), small_lrn_pool(d).bank_steps(6)).stage_banks == stages
    pool = small_lrn_pool(3)  # ids: input 0-2, hidden conv 3-5, fc_from_conv 6-8, hidden fc 9-11, heads 12-17
    plan = RoutePlan(pool, pool.bank_steps(6))
    assert plan.stage_banks == [[0], [1], [1], [1], [2, 4], [3], [3], [3], [5]]
    route = torch.tensor([[0, 6, 9, 10, 18, 15], [1, 3, 4, 18, 7, 16], [0, 3, 4, 5, 18, 12]])  # PASS 18
    bank_at, dup_at = plan.stages(route)
    assert bank_at.tolist() == [  # PASS takes no stage
        [0, -1, -1, -1, 2, 3, 3, -1, 5],
        [0, 1, 1, -1, 2, -1, -1, -1, 5],
        [0, 1, 1, 1, 4, -1, -1, -1, -1],
    ]
    assert dup_at[0, 5:7].tolist() == [0, 1] and dup_at[1, :3].tolist() == [1, 0, 1]


# --- rewards -----------------------------------------------------------------------------------------


def test_collapse_bonus_hand_example() -> None:
    counts = torch.tensor([0.0, 2.0, 4.0, 4.0, 1.0, 3.0])  # c_min = 0, c_max = 4
    bonus = collapse_bonus(counts)
    torch.testing.assert_close(bonus, torch.tensor([1.0, 0.5, 0.0, 0.0, 0.75, 0.25]))
    # the least used module gets 1, the most used 0, whatever the offset
    torch.testing.assert_close(collapse_bonus(torch.tensor([5, 7, 9])), torch.tensor([1.0, 0.5, 0.0]))


@pytest.mark.parametrize("counts", [[3.0, 3.0, 3.0], [0.0, 0.0], [7.0]])
def test_collapse_bonus_all_equal_is_zero(counts: list[float]) -> None:
    bonus = collapse_bonus(torch.tensor(counts))
    assert torch.equal(bonus, torch.zeros(len(counts)))


def test_module_usage_counts_ignores_pass_and_padding() -> None:
    m = 5  # modules 0..4, PASS = 5, padding = 6
    routes = torch.tensor([[0, 5, 2, 4], [2, 1, 5, 6], [6, 6, 6, 6], [3, 5, 5, 4]])
    counts = module_usage_counts(routes, m)
    assert counts.dtype == torch.float32
    assert counts.tolist() == [1.0, 1.0, 2.0, 1.0, 2.0]
    assert module_usage_counts(torch.full((2, 3), m), m).tolist() == [0.0] * m


def test_route_bonus_sums_only_used_modules() -> None:
    bonus = torch.tensor([0.1, 0.2, 0.3, 0.4])  # M = 4: PASS = 4, padding = 5
    routes = torch.tensor([[0, 4, 2, 5], [3, 1, 4, 5], [4, 4, 5, 5], [1, 2, 3, 0]])
    torch.testing.assert_close(route_bonus(routes, bonus), torch.tensor([0.4, 0.6, 0.0, 1.0]))


def test_final_reward() -> None:
    loss, bonus = torch.tensor([0.5, 2.0]), torch.tensor([1.5, 0.0])
    torch.testing.assert_close(final_reward(loss, bonus, 0.5), torch.tensor([0.25, -2.0]))
    torch.testing.assert_close(final_reward(loss, bonus, 0.0), -loss)
