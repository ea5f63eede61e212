"""Every config file composes, and what it describes instantiates."""

from pathlib import Path

import pytest
import torch
from conftest import CONFIGS, compose_train
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from lenx.lit import build_model
from lenx.train import check_config, make_logger

GROUP_FILES = sorted(p.relative_to(CONFIGS) for p in CONFIGS.rglob("*.yaml")  # (extensions: evaluate.py
                     if p.parent != CONFIGS and p.parts[-3:-1] != ("hydra", "launcher")  # names them; their test
                     and p.relative_to(CONFIGS).parts[0] != "extension")  # is in test_extensions.py)


def override_for(rel: Path) -> str:
    group = "/".join(rel.parts[:-1])
    if group == "pos/scaling":  # RoPE scalings apply to the rotary schemes
        return f"pos=rope pos/scaling={rel.stem}"
    if group == "protocol":  # a task protocol needs a task it has numbers for
        return f"protocol={rel.stem} data=copy"
    if group == "protocol/task":  # <protocol>_<data>.yaml, picked by the protocol and the data choice
        protocol, data = rel.stem.split("_", 1)
        return f"protocol={protocol} data={data}"
    return f"+{group}={rel.stem}" if group == "experiment" else f"{group}={rel.stem}"


@pytest.mark.parametrize("rel", GROUP_FILES, ids=str)
def test_every_config_file_composes_and_instantiates(rel, tmp_path):
    first = (CONFIGS / rel).read_text().splitlines()[0]
    assert first.startswith("#"), f"{rel} must open with a one-line comment naming its method/source"
    overrides = override_for(rel).split()
    if rel.parts[0] == "experiment":
        overrides = [f"experiment={rel.stem}"]
    if rel.parts[0] == "experiment_pos":  # a preset's settings for one scheme: applied with both chosen
        overrides = [f"experiment={rel.parts[1]}", f"pos={rel.stem}"]
    if rel.parts[0] == "data" and rel.stem == "local":
        overrides.append(f"data.path={tmp_path}")
    cfg = compose_train(overrides, tmp_path)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if rel.parts[0] == "experiment_pos":
        for key, value in OmegaConf.to_container(OmegaConf.load(CONFIGS / rel)).items():
            assert resolved["pos"][key] == value, f"{rel} did not reach pos.{key}"
    check_config(resolved)
    with torch.device("meta"):  # the Llama presets (100-400 M parameters) are built on the meta device only
        model = build_model(resolved)
    if model.num_params() < 5e7:
        model = build_model(resolved)
    assert model.num_params() > 0
    if rel.parts[0] == "trainer" and rel.stem == "fsdp" and not torch.cuda.is_available():
        strategy = instantiate(cfg.trainer.strategy)  # the Trainer itself needs a GPU for FSDP
        assert type(strategy).__name__ == "FSDPStrategy"
    elif rel.parts[0] == "trainer":
        trainer = instantiate(cfg.trainer, precision="32-true", logger=False, enable_progress_bar=False)
        assert trainer.max_steps > 0
        if rel.stem == "ddp":
            assert type(trainer.strategy).__name__ == "DDPStrategy" and trainer.world_size == 2
    if rel.parts[0] == "logger":
        logger = make_logger(cfg, {"pos": "rope"})
        if rel.stem == "wandb":  # the CSV curve, and beside it a real (offline) W&B run, not a fallback;
            assert [type(lg).__name__ for lg in logger] == ["ResumableCSVLogger", "WandbLogger"]
            logger[1].experiment.finish()  # finished so that it is not reused


def test_evaluate_config_composes():
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("evaluate", overrides=["ckpt=x.ckpt"])
    assert cfg.eval.multipliers == [1, 2, 4, 8, 16]


def test_experiment_overrides_win_over_train_defaults(tmp_path):
    cfg = compose_train(["experiment=smoke"], tmp_path)
    assert cfg.seq_len == 32  # _self_ first: the preset's seq_len is not silently overwritten


@pytest.mark.parametrize("override", ["pos=nonexistent", "model.d_modle=3", "data=nope"])
def test_typos_give_hydra_errors(override, tmp_path):
    with pytest.raises(ConfigCompositionException):
        compose_train([override], tmp_path)


@pytest.mark.parametrize("launcher, target", [
    ("joblib", "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"),
    ("submitit_local", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"),
    ("submitit_slurm", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
    ("slurm", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
])
def test_sweep_launchers_compose(launcher, target, tmp_path):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_ == target
    if launcher == "slurm":
        assert cfg.hydra.launcher.gpus_per_node == 1 and cfg.hydra.launcher.timeout_min == 240


def test_slurm_launcher_follows_the_trainer_devices():
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4",
                                          "trainer.num_nodes=2", "hydra.launcher.partition=gpu"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.nodes, launcher.partition) == (4, 4, 2, "gpu")


def test_a_presets_scheme_settings_apply_to_that_scheme_only_and_yield_to_the_command_line(tmp_path):
    """configs/experiment_pos/<experiment>/<pos>.yaml (T5's max_distance = seq_len in the CPU studies' presets):
    applied with that preset and scheme, not elsewhere, and a command-line value still wins."""
    def pos(*overrides):
        return OmegaConf.to_container(compose_train(list(overrides), tmp_path).pos)

    assert pos("experiment=alibi_table2_cpu", "pos=t5")["max_distance"] == 64
    assert pos("pos=t5")["max_distance"] == 128  # T5's default (the authors') without the preset
    assert pos("experiment=alibi_table2_cpu", "pos=t5", "pos.max_distance=32")["max_distance"] == 32
    assert "max_distance" not in pos("experiment=alibi_table2_cpu", "pos=alibi")
