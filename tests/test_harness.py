"""lenx in lm-evaluation-harness (lenx.harness): lm-eval's own evaluator, run with the lenx backend on local tasks,
gives for tiny checkpoints of a spread of schemes exactly what lenx's model computes on the same windows (rolling
log-likelihood at 1x and 16x the training length, a loglikelihood and a generate_until request), the same numbers
as lm-eval's Hugging Face backend on the export of a rope checkpoint, and scores the task families exported by
scripts/export_lm_eval_tasks.py on the very instances lenx's task probe draws; bad model arguments are one line.

The expected numbers are computed here from the model alone (a forward, a log-softmax, a gather), with lm-eval's
window rule written out again rather than imported, so a backend that cut windows, contexts or generations
differently would fail."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import lm_eval
import pytest
import torch
import yaml
from conftest import ROOT, SAMPLE, STDLIB, compose_train
from lm_eval.tasks import TaskManager
from tokenizers import Tokenizer

import lenx.harness
from lenx.checkpoint import load_model, read_checkpoint, rebuild
from lenx.configs import build_extension
from lenx.errors import LenxError
from lenx.tasks import build_task
from lenx.train import run

SCHEMES = ["rope", "alibi", "t5", "fire", "cope", "shaw_kv", "fox"]  # fox: a mechanism of issue 35
TRAIN = ["experiment=smoke", "trainer.enable_progress_bar=false", "trainer.max_steps=2", "logger=none",
         "model.n_heads=4", *(f"eval.probes.{p}=null" for p in ("extrapolation", "probe", "passkey", "tasks"))]
CORPUS = ["data.vocab_size=300", "data.valid_fraction=0.2", "data.test_fraction=0.2"]
L = 32  # the smoke preset's training length
LOCAL = ["lenx_local_ppl", "lenx_local_next", "lenx_local_gen"]  # examples/lm_eval/*.yaml
GEN_TOKS = 16  # lenx_local_gen.yaml's max_gen_toks


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A corpus of stdlib modules, its own token cache, and `ckpt(scheme)`: a checkpoint trained for 2 steps whose
    embedding and attention projections are then scaled up, so that its predictions differ clearly from token to
    token and its attention from position to position (a window cut one token off, or a scaling left out, would
    change the numbers)."""
    root = tmp_path_factory.mktemp("harness")
    for name in SAMPLE:
        (root / "tree" / "pkg").mkdir(parents=True, exist_ok=True)
        (root / "tree" / "pkg" / name).write_text((STDLIB / name).read_text())
    made = {}

    def ckpt(scheme, *task):  # task: overrides that train on a task (data=copy ...) instead of the corpus
        key = (scheme, *task)
        if key not in made:
            run_dir = root / f"run{len(made)}"
            data = task or [*CORPUS, f"data.path={root / 'tree'}"]
            run(compose_train([*TRAIN, *data, f"pos={scheme}"], run_dir))
            path = run_dir / "checkpoints" / "last.ckpt"
            state = torch.load(path, weights_only=True)
            if not task:
                for name, value in state["state_dict"].items():
                    value *= 8 if name == "model.tok.weight" else 3 if name.endswith("attn.qkv.weight") else 1
                torch.save(state, path)
            made[key] = path
        return made[key]

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LENX_CACHE", str(root / "cache"))
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield root, ckpt


@pytest.fixture(scope="module")
def local_tasks(lab):
    """The shipped example tasks (examples/lm_eval/), reading the shipped documents plus a long one (several
    windows at 16x; a prompt longer than every max_length), copied with their data_files made absolute."""
    root, _ = lab
    out = root / "tasks"
    out.mkdir()
    docs = [json.loads(line) for line in (ROOT / "examples" / "lm_eval" / "docs.jsonl").read_text().splitlines()]
    long = (STDLIB / "json" / "decoder.py").read_text()[:6000]
    docs.append({"text": long, "prompt": long[:4000], "completion": long[4000:4040]})
    (out / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    for name in LOCAL:
        spec = yaml.safe_load((ROOT / "examples" / "lm_eval" / f"{name}.yaml").read_text())
        assert spec["dataset_kwargs"]["data_files"]["test"] == "examples/lm_eval/docs.jsonl"
        spec["dataset_kwargs"]["data_files"]["test"] = str(out / "docs.jsonl")
        (out / f"{name}.yaml").write_text(yaml.safe_dump(spec))
    return out, docs, TaskManager(include_path=str(out), include_defaults=False)


def evaluate(model, args, tasks, manager, batch_size=4):
    """Per task, each document's filtered response, from lm_eval.simple_evaluate."""
    out = lm_eval.simple_evaluate(model=model, model_args=args, tasks=tasks, task_manager=manager,
                                  batch_size=batch_size, device="cpu", log_samples=True, bootstrap_iters=0)
    return {t: [s["filtered_resps"][0] for s in sorted(rows, key=lambda s: s["doc_id"])]
            for t, rows in out["samples"].items()}


@torch.no_grad()
def logp(model, ids):
    """Log-probabilities (T, V) of the model on one row of token ids: a forward, a log-softmax (fp32)."""
    return model(torch.tensor([ids]))[0].float().log_softmax(-1)


def rolling(model, ids, prefix, n):
    """lm-eval's rolling log-likelihood, written out: targets in chunks of n, each read by the n tokens (or all
    there are) before it, the first after the prefix token."""
    seq, total, start = [prefix, *ids], 0.0, 0
    while start < len(ids):
        stop = min(start + n, len(ids))
        lo = max(0, stop - n)
        lp = logp(model, seq[lo:stop])  # seq[t] predicts ids[t]
        total += sum(lp[t - lo, ids[t]].item() for t in range(start, stop))
        start = stop
    return total


def continuation(model, tok, prompt, completion, n):
    """(log p(completion | prompt), whether greedy) as lm-eval splits and cuts it: the completion's tokens are
    those of prompt + completion past the prompt's; the input is the last n + 1 tokens but one."""
    ctx = tok.encode(prompt).ids
    cont = tok.encode(prompt + completion).ids[len(ctx):]
    lp = logp(model, (ctx + cont)[-(n + 1):][:-1])[-len(cont):]
    return sum(lp[k, t].item() for k, t in enumerate(cont)), all(lp[k].argmax().item() == t for k, t in enumerate(cont))


def greedy(model, tok, prompt, n, stop="\n", eod=None):
    """Greedy decoding of at most GEN_TOKS tokens after the prompt's last n - GEN_TOKS tokens, up to `stop`: the
    text, and the rows the model read."""
    ids, gen, rows = tok.encode(prompt).ids[-(n - GEN_TOKS):], [], []
    while len(gen) < GEN_TOKS:
        rows.append(tuple(ids + gen))
        t = logp(model, ids + gen)[-1].argmax().item()
        if t == eod:
            break
        gen.append(t)
        if stop in tok.decode(gen):
            break
    return tok.decode(gen).split(stop)[0], rows


def close(a, b, rel=1e-5):
    return abs(a - b) <= rel * abs(b)


def check_against_model(resps, model, tok, docs, n, read=None):
    """Every response of the three local tasks is what `model` computes; `read`: the rows the backend's model read
    (the generations' must be among them: the context cut as lm-eval's HF backend cuts it)."""
    eod = tok.token_to_id("<|endoftext|>")
    for d, got in zip(docs, resps["lenx_local_ppl"], strict=True):
        assert close(got, rolling(model, tok.encode(d["text"]).ids, eod, n)), (d["text"][:30], n)
    for d, (ll, is_greedy) in zip(docs, resps["lenx_local_next"], strict=True):
        want, want_greedy = continuation(model, tok, d["prompt"], d["completion"], n)
        assert close(ll, want) and is_greedy == want_greedy, (d["prompt"][-30:], n)
    for d, text in zip(docs, resps["lenx_local_gen"], strict=True):
        want, rows = greedy(model, tok, d["prompt"], n, eod=eod)
        assert text == want and (read is None or set(rows) <= read), (d["prompt"][-30:], n)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_lm_eval_scores_what_lenx_computes_at_1x_and_16x(lab, local_tasks, scheme):
    _, ckpt = lab
    _, docs, manager = local_tasks
    path = ckpt(scheme)
    model, _ = load_model(path)
    tok = Tokenizer.from_str(read_checkpoint(path)["lenx_tokenizer"])
    for n in (L, 16 * L):
        lm = lenx.harness.LenxLM(ckpt=str(path), max_length=n, batch_size=4)  # (an instance: to see what it reads)
        read = set()
        lm.model.register_forward_pre_hook(lambda _, args, read=read: read.update(map(tuple, args[0].tolist())))
        resps = evaluate(lm, None, LOCAL, manager)
        check_against_model(resps, model, tok, docs, n, read)
        assert len(tok.encode(docs[-1]["text"]).ids) > 2 * n  # the long document: several windows, also at 16x


def test_the_hf_export_of_a_rope_checkpoint_gives_the_same_numbers(lab, local_tasks, tmp_path):
    from lenx.export import export_hf

    _, ckpt = lab
    _, _, manager = local_tasks
    path = ckpt("rope")
    hf_dir = export_hf(path, tmp_path / "hf")
    for n in (L, 16 * L):
        ours = evaluate("lenx", {"ckpt": str(path), "max_length": n}, LOCAL, manager)
        theirs = evaluate("hf", {"pretrained": str(hf_dir), "max_length": n, "dtype": "float32"}, LOCAL, manager)
        assert all(close(a, b) for a, b in zip(ours["lenx_local_ppl"], theirs["lenx_local_ppl"], strict=True)), n
        for (a, ga), (b, gb) in zip(ours["lenx_local_next"], theirs["lenx_local_next"], strict=True):
            assert close(a, b) and ga == gb, n
        assert ours["lenx_local_gen"] == theirs["lenx_local_gen"], n


def test_scaling_and_extension_mean_what_they_mean_in_evaluate(lab, local_tasks):
    """scaling=yarn and extension={name: self_extend, ...}: the model evaluate.py scores under `scalings=[yarn]`
    `extensions=[{name: self_extend, ...}]`, and not the model as trained."""
    _, ckpt = lab
    _, docs, manager = local_tasks
    path = ckpt("rope")
    state = read_checkpoint(path)
    extension = {"name": "self_extend", "window": 8, "group": 4}  # (a mapping: JSON model_args on the CLI)
    model, cfg = rebuild(state, "yarn", str(path))
    model.extension = build_extension(extension, cfg["seq_len"])[1]
    plain, _ = rebuild(state, None, str(path))
    tok = Tokenizer.from_str(state["lenx_tokenizer"])
    n, eod = 16 * L, tok.token_to_id("<|endoftext|>")
    got = evaluate("lenx", {"ckpt": str(path), "max_length": n, "scaling": "yarn", "extension": extension},
                   ["lenx_local_ppl"], manager)["lenx_local_ppl"]
    for d, ll in zip(docs, got, strict=True):
        ids = tok.encode(d["text"]).ids
        assert close(ll, rolling(model, ids, eod, n))
    assert not close(got[-1], rolling(plain, tok.encode(docs[-1]["text"]).ids, eod, n), rel=1e-4)


def test_the_task_export_scores_the_instances_lenx_scores(lab, tmp_path):
    """scripts/export_lm_eval_tasks.py writes held-out instances as lm-eval tasks; the lenx backend scores a task
    checkpoint on them: each instance's answer log-likelihood and exact match are the model's on the instance
    task.instance(0, "eval", i, size) that lenx's task probe draws."""
    _, ckpt = lab
    path = ckpt("alibi", "data=copy", "data.task.train_size=6")
    out = tmp_path / "tasks"
    spec = importlib.util.spec_from_file_location("export_lm_eval_tasks", ROOT / "scripts" / "export_lm_eval_tasks.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main([str(out), "--ckpt", str(path), "--multipliers", "1,2", "--instances", "6"])
    script.main([str(tmp_path / "all"), "--multipliers", "1", "--instances", "2"])  # every family that exports
    assert sorted(p.stem for p in (tmp_path / "all").glob("*.yaml")) == [
        f"{t}_x1" for t in ("addition", "binary_addition", "binary_multiplication", "bucket_sort", "copy",
                            "counting", "cycle_navigation", "duplicate_string", "missing_duplicate",
                            "modular_arithmetic", "niah_multikey", "odds_first", "parity", "passkey_task", "reverse",
                            "selective_copy", "sort", "stack_manipulation", "variable_tracking")]
    # answers that are labels (word problems) or several spans (flip-flop's reads): skipped, each with its reason,
    # and refused in one line when asked for by name
    for name in ("flip_flop", "word_problem_s5"):
        assert not (tmp_path / "all" / f"{name}_x1.yaml").exists()
    with pytest.raises(SystemExit):
        script.main([str(tmp_path / "ff"), "--tasks", "flip_flop", "--multipliers", "1", "--instances", "2"])
    model, cfg = load_model(path)
    task = build_task(cfg)
    n = 2 * cfg["seq_len"] + 2  # every instance at 2x fits: nothing is cut
    resps = evaluate("lenx", {"ckpt": str(path), "max_length": n}, ["lenx_copy"],
                     TaskManager(include_path=str(out), include_defaults=False))
    for m in (1, 2):
        rows = resps[f"lenx_copy_x{m}"]
        assert len(rows) == 6
        for i, (ll, is_greedy) in enumerate(rows):
            ids, mask = task.instance(0, "eval", i, m * task.train_size)
            lp = logp(model, ids[:-1].tolist())
            answer = torch.from_numpy(ids[1:][mask[1:]])
            lp_A = lp[torch.from_numpy(mask[1:])]
            assert close(ll, lp_A.gather(-1, answer[:, None]).sum().item())
            assert is_greedy == bool((lp_A.argmax(-1) == answer).all())


def test_bad_model_arguments_are_one_line(lab, tmp_path):
    _, ckpt = lab
    rope, alibi, cope = str(ckpt("rope")), str(ckpt("alibi")), str(ckpt("cope"))
    cases = [({"ckpt": rope, "temperature": 1}, r"unknown lenx model argument\(s\) temperature; known: ckpt"),
             ({}, r"needs ckpt=<run>/checkpoints/last.ckpt"),
             ({"ckpt": str(tmp_path / "nope.ckpt")}, r"checkpoint not found: .*nope.ckpt"),
             ({"ckpt": alibi, "scaling": "yarn"}, r"scaling 'yarn' does not apply to pos=.*ALiBi"),
             ({"ckpt": rope, "scaling": "nosuch"}, r"unknown scaling 'nosuch'"),
             ({"ckpt": cope, "extension": "self_extend"}, r"extension self_extend does not apply to pos=cope"),
             ({"ckpt": rope, "precision": "fp8"}, r"^precision must be auto, bf16 or 32"),
             ({"ckpt": rope, "batch_size": "auto"}, r"batch_size must be a positive integer"),
             ({"ckpt": rope, "max_length": 0}, r"max_length must be a positive integer")]
    state = read_checkpoint(rope)  # a tokenizer that is not the one training recorded
    state["lenx_tokenizer"] = state["lenx_tokenizer"].replace('"<|endoftext|>"', '"<|end|>"', 1)
    torch.save(state, tmp_path / "other_tokenizer.ckpt")
    cases.append(({"ckpt": str(tmp_path / "other_tokenizer.ckpt")},
                  r"the tokenizer stored in .* hashes to \w{12}, not to the tokenizer_hash \w{12} its training recorded"))
    if not torch.cuda.is_available():
        cases.append(({"ckpt": rope, "device": "cuda"}, r"device=cuda requested but CUDA is not available"))
    for kwargs, message in cases:
        with pytest.raises(LenxError, match=message) as e:
            lenx.harness.LenxLM(**kwargs)
        assert "\n" not in str(e.value), kwargs


@pytest.mark.slow
def test_the_command_line_runs_lm_eval_with_the_backend(lab, local_tasks, tmp_path):
    """`python -m lenx.harness` (the lenx-lm-eval console script) is lm-eval's CLI with `--model lenx`: it scores
    with --device auto by default and writes lm-eval's results; an unknown model argument is one `lenx: error:`
    line, exit status 2, before anything is scored."""
    _, ckpt = lab
    tasks_dir, _, _ = local_tasks
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled",  # this tree's lenx, wherever pytest runs
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    cmd = [sys.executable, "-m", "lenx.harness", "--model", "lenx", "--include_path", str(tasks_dir),
           "--tasks", "lenx_local_ppl", "--batch_size", "4"]
    ok = subprocess.run([*cmd, "--model_args", f"ckpt={ckpt('rope')},max_length=64", "--output_path",
                         str(tmp_path / "out")], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
                         check=False)
    assert ok.returncode == 0, ok.stderr[-2000:]
    (result,) = (tmp_path / "out").rglob("results_*.json")
    config = json.loads(result.read_text())["config"]
    assert config["lenx_max_length"] == 64 and config["lenx_pos"] == "rope" and config["device"] == "auto"
    bad = subprocess.run([*cmd, "--model_args", f"ckpt={ckpt('rope')},temperature=1"], capture_output=True,
                         text=True, timeout=300, env=env, cwd=tmp_path, check=False)
    errors = [line for line in bad.stderr.splitlines() if "lenx: error:" in line]
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr[-2000:]
    assert errors == [("lenx: error: unknown lenx model argument(s) temperature; known: ckpt, max_length, scaling, "
                       "extension, precision, device, batch_size")]
    shutil.rmtree(tmp_path / "out")
