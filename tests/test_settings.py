"""A run's settings (``training_run.settings``) and its plan (``training_run.resume``), without torch:
presets applied inside ``RunConfig.from_settings``, an honest ``RunConfig()``, algorithms' fixed
settings, ``Literal`` choices, ``config.json`` in both layouts (a run folder written before the nested
layout still plans a resume), and a plan trained once."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from agents.config import AgentConfig, RouterConfig
from routing_env.config import RoutingConfig
from training_run.resume import plan_run
from training_run.settings import PRESETS, RunConfig, SettingError, settings_of_dict

REPO = Path(__file__).resolve().parents[1]
# A run folder of results/ written before config.json was nested by section.
FLAT_RUN = REPO / "results" / "mnist" / "grid-lrn_d5_L4_p3_bonus0.1"


def test_run_config_holds_the_preset_it_names() -> None:
    plain = RunConfig()
    assert plain.preset is None  # the dataclasses' defaults, labelled as no preset
    assert plain.env.bonus_weight == RoutingConfig().bonus_weight and plain.router == RouterConfig()
    best = RunConfig.from_settings({})  # a command line without --preset
    assert best.preset == "best"
    for preset in PRESETS:
        cfg = RunConfig.from_settings({"run.preset": preset, "env.duplicates": 3})
        assert cfg.preset == preset and cfg.env.duplicates == 3
        for key, value in PRESETS[preset].items():
            if key != "env.duplicates":  # given above: it beats the preset's
                assert cfg.to_settings()[key] == value, (preset, key)
    # a setting given beats the preset's
    assert RunConfig.from_settings({"env.bonus_weight": 0.5}).env.bonus_weight == 0.5


def test_settings_and_config_json_round_trip(tmp_path: Path) -> None:
    cfg = RunConfig.from_settings(
        {
            "run.preset": "paper",
            "run.out": str(tmp_path),
            "env.max_pairs": 64,
            "router.conv_channels": [8, 16],
        }
    )
    assert RunConfig.from_settings(cfg.to_settings()) == cfg
    assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_an_algorithm_fixes_its_settings_and_refuses_others() -> None:
    static = RunConfig.from_settings({"run.algo": "static", "run.preset": "paper"})
    assert static.env.max_depth == 5 and static.env.pool == "static"
    rn = RunConfig.from_settings({"run.algo": "routing_network"})  # over the preset's bonus 0.1
    assert rn.env.bonus_weight == 0.0 and rn.env.pool == "routing_network"
    with pytest.raises(SettingError, match="^--algo static fixes --max-depth 5: leave out --max-depth 6$"):
        RunConfig.from_settings({"run.algo": "static", "env.max_depth": 6})
    with pytest.raises(ValueError, match="algo static needs env settings"):
        RunConfig(algo="static")  # built directly: nothing sets them silently


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: RoutingConfig(dispatch="fast"), "dispatch must be one of ('auto', 'dense', "),
        (lambda: AgentConfig(reward_timing="later"), "reward_timing must be one of ('per_step', 'terminal')"),
        (lambda: RouterConfig(critic_encoder="own"), "critic_encoder must be one of ('shared', 'separate')"),
        (lambda: RunConfig(preset="fast"), "preset must be one of ('best', 'paper', 'probe_router')"),
    ],
)
def test_a_bad_choice_is_one_clear_error(make, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make()


def test_flag_names_in_setting_errors() -> None:
    with pytest.raises(SettingError, match="--limit-train must be >= 1"):
        RunConfig.from_settings({"env.max_pairs": 0})
    with pytest.raises(SettingError, match="unknown setting 'env'"):
        RunConfig.from_settings({"env": 1})
    with pytest.raises(SettingError, match="unknown setting env.pools"):
        RunConfig.from_settings({"env.pools": 1})


def test_a_run_folder_of_the_flat_layout_reads_and_plans_a_resume(tmp_path: Path) -> None:
    """config.json as runs wrote it before the nested layout: its settings under their old names."""
    config = json.loads((FLAT_RUN / "config.json").read_text())
    assert "env_config" in config and "env_id" not in config  # the layout this test is about
    settings = settings_of_dict(config)
    assert settings["run.env_id"] == config["env"] and settings["run.epochs"] == config["epochs"]
    assert settings["env.duplicates"] == config["env_config"]["duplicates"]
    assert settings["env.bonus_warmup"] == config["bonus_warmup"]  # at the top only
    assert settings["router.task_prior_std"] == config["task_prior"]
    assert settings["run.checkpoint"] is (not config["no_checkpoint"])
    assert settings["run.progress"] is (not config["no_progress"])

    out = tmp_path / "run"
    shutil.copytree(FLAT_RUN, out)
    (out / "checkpoint").mkdir()
    (out / "checkpoint" / "state.json").write_text(json.dumps({"epoch": 9}))
    plan = plan_run(RunConfig.from_settings({"run.out": str(out)}), {"run.out": str(out)}, resume=True)
    assert plan.resume and plan.done_epochs == 10 and not plan.finished
    cfg = plan.config
    assert (cfg.env.duplicates, cfg.env.max_depth, cfg.env.bonus_weight) == (5, 4, 0.1)
    assert cfg.router.task_prior_std == 3.0 and cfg.epochs == config["epochs"]
    with pytest.raises(ValueError, match=r"--duplicates 2 \(the run has 5\)"):
        plan_run(cfg, {"run.out": str(out), "env.duplicates": 2}, resume=True)


def test_a_plan_is_trained_once(tmp_path: Path) -> None:
    plan = plan_run(RunConfig.from_settings({"run.out": str(tmp_path / "run")}), {}, resume=False)
    assert not plan.resume and plan.folder.path == tmp_path / "run" and not plan.folder.path.exists()
    plan.take()
    with pytest.raises(ValueError, match="was trained already: plan the run again"):
        plan.take()
