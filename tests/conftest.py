import sys
import sysconfig
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
SCHEMES = sorted(p.stem for p in (CONFIGS / "pos").glob("*.yaml"))
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _quiet_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


STDLIB = Path(sysconfig.get_paths()["stdlib"])
SAMPLE = ["textwrap.py", "colorsys.py", "bisect.py", "keyword.py", "heapq.py", "fnmatch.py", "glob.py",
          "shlex.py", "string.py", "copy.py", "random.py", "base64.py", "calendar.py", "difflib.py"]


@pytest.fixture
def tree(tmp_path):
    """A small tree of real stdlib modules (plus a site-packages file and a non-UTF-8 file to be skipped)."""
    root = tmp_path / "src"
    for name in SAMPLE:
        (root / "pkg").mkdir(parents=True, exist_ok=True)
        (root / "pkg" / name).write_text((STDLIB / name).read_text())
    (root / "site-packages").mkdir()
    (root / "site-packages" / "thirdparty.py").write_text("print('not stdlib')\n" * 50)
    (root / "pkg" / "latin1.py").write_bytes(b"# caf\xe9\n")  # not UTF-8: skipped
    return root




def compose_train(overrides, run_dir):
    """The train config as @hydra.main would give it: Hydra's runtime set, no `hydra` node in the job config."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=[f"run_dir={run_dir}", *overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


# Settings the per-layer hybrids need in the tests' 2-layer models: NoPE on every 2nd layer (their default, every
# 4th, needs 4 layers and refuses fewer)
# (iRoPE: its temperature from position 15 on, so that it acts within the tests' lengths)
SMALL_MODEL = {"rope_nope": {"nope_every": 2}, "rnope_swa": {"nope_every": 2},
               "irope": {"nope_every": 2, "temperature_floor": 16}}
# Settings a scheme needs in every test model: Abacus reads which token ids are digits (a task run's vocabulary
# or a corpus tokenizer's digit tokens set them; the tests' random tokens: ids 3-12)
REQUIRED = {"abacus": {"digit_ids": list(range(3, 13))}}


def small_model_overrides(scheme: str) -> list[str]:
    """REQUIRED's and SMALL_MODEL's settings for `scheme` as Hydra overrides (pos.<key>=<value>)."""
    settings = {**REQUIRED.get(scheme, {}), **SMALL_MODEL.get(scheme, {})}
    return [f"pos.{k}={v}".replace(" ", "") for k, v in settings.items()]


def make_model(scheme: str, *, train_len: int = 16, n_layers: int = 2, n_heads: int = 2, d_model: int = 32,
               vocab_size: int = 50, **over):
    """A small seeded Decoder with configs/pos/<scheme>.yaml (its `defaults` dropped), in eval mode."""
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from lenx.model import Decoder

    torch.manual_seed(0)
    cfg = OmegaConf.load(CONFIGS / "pos" / f"{scheme}.yaml")
    cfg.pop("defaults", None)
    cfg.update({**REQUIRED.get(scheme, {}), **(SMALL_MODEL.get(scheme, {}) if n_layers < 4 else {}), **over})
    return Decoder(vocab_size=vocab_size, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                   train_len=train_len, pos=instantiate(cfg)).eval()
