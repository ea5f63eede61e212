"""Model presets and the block (issue 38): every preset with every scheme at its nominal size (meta device), the
Llama block against Llama's formulas, compile vs eager, MFU in training's logs, the GPU study's budget."""

import subprocess
import sys

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from conftest import CONFIGS, ROOT, SCHEMES, compose_train
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from lenx import throughput
from lenx.block import BlockShape, swiglu_hidden
from lenx.budget import estimate, grid_size
from lenx.checkpoint import build_model, safe_run_config, scheme_config
from lenx.errors import CheckpointError, ConfigError
from lenx.lit import LenxModule
from lenx.model import Decoder

PRESETS = sorted(p.stem for p in (CONFIGS / "model").glob("*.yaml"))
VOCAB = 32000  # the vocabulary the Llama presets' documented totals assume (their header comments)
# Nominal non-embedding counts (token table, untied head and the scheme's own parameters excluded): the GPT-2
# presets' 12 n_layers d^2 (Kaplan et al. 2020, arXiv:2001.08361: tiny "~0.8M", small "~10M" in their headers);
# the Llama presets' documented counts (configs/model/llama_*.yaml), with their documented totals at V = 32000.
NOMINAL = {"tiny": 12 * 4 * 128 ** 2, "small": 12 * 6 * 384 ** 2, "llama_125m": 84.95e6, "llama_350m": 308.33e6}
TOTAL = {"llama_125m": 134.11e6, "llama_350m": 373.87e6}
# FoX's "Pro" layer adds an output gate Linear(C, C) per layer (arXiv:2503.02130), outside the scheme's module
PRO_GATE = {"fox_pro": 1}


def preset(name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONFIGS / "model" / f"{name}.yaml"))


def meta_model(name: str, scheme: str, **model) -> Decoder:
    cfg = {"model": preset(name) | model, "pos": scheme_config(scheme), "data": {"vocab_size": VOCAB},
           "seq_len": 512}
    with torch.device("meta"):
        return build_model(cfg)


def test_every_preset_is_tested():
    assert set(PRESETS) == set(NOMINAL)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_builds_with_every_scheme_at_its_nominal_size(name, scheme):
    model = meta_model(name, scheme)
    assert model.tok.weight.is_meta
    c = model.param_counts()
    m = preset(name)
    expected = NOMINAL[name] + PRO_GATE.get(scheme, 0) * m["n_layers"] * m["d_model"] ** 2
    assert c["non_embedding"] == pytest.approx(expected, rel=0.02)
    tied = m["tie_embeddings"]
    assert c["embedding"] == (1 if tied else 2) * VOCAB * m["d_model"]  # Llama's head is its own matrix
    assert c["total"] == c["embedding"] + c["positional"] + c["non_embedding"]
    if name in TOTAL and scheme == "rope":  # no parameters of its own: the documented total
        assert c["total"] == pytest.approx(TOTAL[name], rel=1e-4)


def test_tied_head_is_a_config_choice():
    untied, tied = meta_model("llama_125m", "rope"), meta_model("llama_125m", "rope", tie_embeddings=True)
    assert tied.head.weight is tied.tok.weight and untied.head.weight is not untied.tok.weight
    assert untied.param_counts()["total"] - tied.param_counts()["total"] == VOCAB * 768
    assert tied.param_counts()["total"] == pytest.approx(109.53e6, rel=1e-4)  # the header's tied figure


@pytest.mark.parametrize("d, hidden", [(768, 2048), (1024, 2816), (4096, 11008), (5120, 13824)])
def test_swiglu_width_is_llamas(d, hidden):
    """Llama 7B's and 13B's released widths (11008, 13824) from d = 4096, 5120 with multiple_of 256."""
    assert swiglu_hidden(d, 4, 256) == hidden


def test_llama_block_is_rmsnorm_and_swiglu_as_llama_writes_them():
    torch.manual_seed(0)
    model = Decoder(vocab_size=50, d_model=32, n_layers=1, n_heads=2, train_len=8, pos=_pos("rope"), norm="rmsnorm",
                    mlp="swiglu", multiple_of=8)
    block, x = model.blocks[0], torch.randn(2, 5, 32)
    with torch.no_grad():
        block.ln1.weight.normal_()
        ref_norm = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * block.ln1.weight  # Llama's RMSNorm
        torch.testing.assert_close(block.ln1(x), ref_norm)
        hidden = swiglu_hidden(32, 4, 8)
        w1, w3 = block.mlp.gate_up.weight[:hidden], block.mlp.gate_up.weight[hidden:]  # gate, up
        ref_mlp = (F.silu(x @ w1.T) * (x @ w3.T)) @ block.mlp.down.weight.T  # w2(silu(w1 x) * w3 x)
        torch.testing.assert_close(block.mlp(x), ref_mlp)
    assert isinstance(model.ln_f, torch.nn.RMSNorm) and model.ln_f.eps == 1e-6
    keys = set(model.state_dict())
    assert {"blocks.0.ln1.weight", "blocks.0.mlp.gate_up.weight", "blocks.0.mlp.down.weight"} <= keys
    assert not any(k.endswith(".bias") for k in keys)  # no biases, as Llama
    # GPT-2's residual-branch init (std 0.02 / sqrt(2 n_layers)) reaches the SwiGLU's output projection too
    assert model.blocks[0].mlp.down.weight.std().item() == pytest.approx(0.02 / 2 ** 0.5, rel=0.1)


def test_default_block_keeps_gpt2_keys():
    """tiny / small models (and their checkpoints) keep their parameter names: LayerNorm + mlp.0 / mlp.2."""
    keys = set(Decoder(vocab_size=50, d_model=16, n_layers=1, n_heads=2, train_len=8, pos=_pos("rope")).state_dict())
    assert keys == {"tok.weight", "head.weight", "ln_f.weight", "blocks.0.ln1.weight", "blocks.0.ln2.weight",
                    "blocks.0.attn.qkv.weight", "blocks.0.attn.proj.weight", "blocks.0.mlp.0.weight",
                    "blocks.0.mlp.2.weight"}


@pytest.mark.parametrize("scheme", SCHEMES)
def test_llama_block_runs_every_scheme_with_and_without_qk_norm(scheme):
    from conftest import REQUIRED, SMALL_MODEL
    for qk_norm in (False, True):
        torch.manual_seed(0)
        model = Decoder(vocab_size=50, d_model=32, n_layers=2, n_heads=2, train_len=16, norm="rmsnorm",
                        mlp="swiglu", multiple_of=8, tie_embeddings=False, attn={"qk_norm": qk_norm},
                        pos=_pos(scheme, **REQUIRED.get(scheme, {}), **SMALL_MODEL.get(scheme, {})))
        logits = model(torch.randint(0, 50, (2, 16)))
        logits.float().logsumexp(-1).mean().backward()
        assert torch.isfinite(logits).all() and model.blocks[0].mlp.gate_up.weight.grad is not None
        assert hasattr(model.blocks[0].attn, "q_norm_C") == (qk_norm or scheme == "fox_pro")  # FoX Pro brings it


def _pos(scheme: str, **over):
    from hydra.utils import instantiate

    cfg = OmegaConf.load(CONFIGS / "pos" / f"{scheme}.yaml")
    cfg.pop("defaults", None)
    cfg.update(over)
    return instantiate(cfg)


@pytest.mark.parametrize("key, value", [("norm", "batchnorm"), ("mlp", "relu"), ("multiple_of", 0)])
def test_unknown_block_options_are_one_line(key, value):
    with pytest.raises(ConfigError, match=f"model.{key}"):
        BlockShape.from_config({key: value})
    stored = {"model": preset("llama_125m") | {key: value}, "pos": scheme_config("rope"),
              "data": {"name": "stdlib", "vocab_size": 64}, "seq_len": 16}
    with pytest.raises(CheckpointError, match=f"model.{key}.*refusing to load"):
        safe_run_config(stored)


# ------------------------------------------------------------------------------ FLOPs, peaks, MFU in training
def test_flops_per_token_is_palms_count():
    model = meta_model("llama_125m", "rope")
    n = model.param_counts()["total"] - VOCAB * 768  # the input table is a lookup; the untied head a matmul
    assert throughput.matmul_params(model) == n
    assert throughput.model_flops_per_token(model, 512) == 6 * n + 12 * 12 * 768 * 512
    tied = meta_model("llama_125m", "rope", tie_embeddings=True)  # the tied table counts once, as the head
    assert throughput.matmul_params(tied) == tied.param_counts()["total"]


@pytest.mark.parametrize("name, tflops", [("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H100 PCIe", 756),
                                          ("NVIDIA H100 NVL", 835), ("NVIDIA H200", 989),
                                          ("NVIDIA A100-SXM4-80GB", 312), ("NVIDIA A100 80GB PCIe", 312),
                                          ("NVIDIA L40S", 362), ("NVIDIA L4", 121), ("NVIDIA A10", 125),
                                          ("NVIDIA A10G", None), ("Tesla T4", None)])
def test_gpu_peaks_are_dense_bf16_by_name(name, tflops):
    assert throughput.gpu_peak_flops(name) == (None if tflops is None else tflops * 1e12)


def _train_two_steps(compile: bool, scheme: str = "rope", accelerator: str = "cpu", precision: str = "32-true",
                     attention: str = "sdpa"):
    """A small Llama-style LenxModule through a Trainer, 2 steps on fixed batches; (losses, module, trainer)."""
    cfg = {"model": preset("llama_125m") | {"d_model": 64, "n_layers": 2, "n_heads": 2, "multiple_of": 32},
           "pos": scheme_config(scheme), "attention": attention, "data": {"name": "stdlib", "vocab_size": 128}, "seq_len": 32,
           "batch_size": 4, "compile": compile, "seed": 0, "trainer": {"max_steps": 2},
           "optim": OmegaConf.to_container(OmegaConf.load(CONFIGS / "optim" / "adamw.yaml"))}
    losses = []

    class Losses(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(outputs["loss"].item())

    torch.manual_seed(0)
    module = LenxModule(cfg)
    g = torch.Generator().manual_seed(1)
    data = [torch.randint(0, 128, (4, 33), generator=g) for _ in range(2)]
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, gradient_clip_val=1.0, callbacks=[Losses()],
                        precision=precision, accelerator=accelerator, devices=1, log_every_n_steps=1)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(data, batch_size=None))
    return losses, module, trainer


def test_compiled_llama_trains_like_eager():
    """compile=true (nn.Module.compile in configure_model) trains a Llama-style model to the same losses (CPU
    inductor needs a C compiler; ~30 s cold)."""
    from torch._dynamo.utils import counters

    eager, module, trainer = _train_two_steps(False)
    counters.clear()
    compiled, _, _ = _train_two_steps(True)
    assert counters["stats"]["unique_graphs"] >= 1  # dynamo did capture the model
    assert compiled == pytest.approx(eager, rel=1e-4) and eager[0] != eager[1]
    # the throughput line: tokens/s and MFU (PaLM's count against the measured peak) in the progress bar
    bar = trainer.progress_bar_metrics
    fpt = throughput.flops_per_token(module.n_matmul, 2, 64, 32)
    assert bar["train/mfu"] == pytest.approx(bar["train/tokens_per_s"] * fpt / module.peak_flops, rel=1e-5)
    assert 0 < bar["train/mfu"] < 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("scheme", ["rope", "alibi", "t5"])
def test_compiled_bf16_training_on_cuda_matches_eager(scheme):
    """On a GPU as gpu_study trains: bf16-mixed, attention=flex (FlexAttention for ALiBi and T5), compiled or not;
    the losses agree to bf16's precision, and MFU is taken against the device's dense bf16 peak when known."""
    eager, module, _ = _train_two_steps(False, scheme, "gpu", "bf16-mixed", "flex")
    compiled, _, trainer = _train_two_steps(True, scheme, "gpu", "bf16-mixed", "flex")
    assert compiled == pytest.approx(eager, rel=2e-2)
    if module.peak_flops is not None:
        assert 0 < trainer.progress_bar_metrics["train/mfu"] < 1


# ------------------------------------------------------------------------------------------- the GPU study
def test_gpu_study_composes_and_its_budget_is_the_stated_arithmetic(tmp_path):
    cfg = compose_train(["experiment=gpu_study"], tmp_path)
    d = OmegaConf.to_container(cfg, resolve=True)
    assert (d["seq_len"], d["model"]["norm"], d["model"]["mlp"], d["data"]["name"]) == (512, "rmsnorm", "swiglu",
                                                                                           "wikitext103")
    assert d["compile"] is True and d["trainer"]["precision"] == "auto"
    grid = grid_size(OmegaConf.to_container(HydraConfig.get().sweeper.params), [])
    assert grid == 33 and HydraConfig.get().runtime.choices.model == "llama_125m"
    e = estimate(d, "llama_125m", grid)
    tokens = 7500 * 256 * 512
    n = 134_105_856 - VOCAB * 768  # pos=rope: the preset's total minus the input table
    assert e["tokens_per_run"] == tokens and e["flops_per_token"] == 6 * n + 12 * 12 * 768 * 512
    assert e["gpu_hours"] == pytest.approx(33 * tokens / 4.0e5 / 3600)
    assert e["gpu_hours"] <= e["budget_gpu_hours"]  # the study fits its stated budget
    assert e["implied_mfu"] == pytest.approx(4.0e5 * e["flops_per_token"] / 989e12)


def test_grid_size_follows_the_command_line():
    params = {"pos": "a,b,c", "seed": "0,1,2"}
    assert grid_size(params, []) == 9
    assert grid_size(params, ["pos=rope,alibi"]) == 6
    assert grid_size(params, ["pos=rope", "seq_len=64"]) == 3
    assert grid_size(params, ["+x=1,2"]) == 18


def test_gpu_study_prints_its_budget_before_any_work(tmp_path):
    """The estimate comes before the corpus is even looked for (here: missing local files, one error line)."""
    missing = "{train: %s/train.parquet, validation: %s/v.parquet, test: %s/t.parquet}" % ((tmp_path,) * 3)
    r = subprocess.run([sys.executable, "train.py", "experiment=gpu_study", "pos=rope", f"data.data_files={missing}",
                        f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       check=False)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "data.data_files" in out and "Traceback" not in out
    assert out.index("budget: model=llama_125m (134.11 M parameters)") < out.index("data.data_files")
    assert "0.68 GPU-hours a run" in out and "33 runs, 22.5 GPU-hours" in out
