"""lenx as a model backend of EleutherAI's lm-evaluation-harness (https://github.com/EleutherAI/lm-evaluation-harness,
pinned at 0.4.13): `lenx-lm-eval --model lenx --model_args ckpt=<run>/checkpoints/last.ckpt,max_length=<n> --tasks
<task>` scores any lenx checkpoint, of any scheme, with the field's evaluation tool; no export needed.

Discovery: lm-eval 0.4.13 finds a backend only in its own registry (`lm_eval.api.registry.model_registry`, which
`@register_model` fills when the module defining it is imported); its CLI reads no entry points and imports no
plugin. So `lenx-lm-eval` (`main` below) imports this module and runs lm-eval's own CLI, and Python callers
`import lenx.harness` before `lm_eval.simple_evaluate(model="lenx", model_args={...}, ...)`.

Model arguments (a key not listed here, a missing checkpoint, a scaling on a scheme that takes none: one line, before
any scoring):
  ckpt        a lenx checkpoint (required), rebuilt and validated as evaluate.py rebuilds it (lenx.checkpoint).
  max_length  tokens per forward (default: the training length): rolling windows of that length; longer contexts
              are cut from the left, as lm-eval's own backends cut them. 16x the training length scores at 16x.
  scaling     as `scalings=[...]` in evaluate.py: a name of configs/pos/scaling/ (rotary schemes), `interpolate`
              (a learned table), or a mapping {"method": "yarn", "factor": 4} (JSON model_args). Default: as
              trained. lm-eval reads the word `none` as no value, so `scaling=none` also means "as trained".
  extension   as `extensions=[...]`: a name of configs/extension/ or a mapping {"name": "self_extend", "window": 8}.
  precision   eval.precision's choices: 32 (default), bf16, auto.
  device      lm-eval's --device, under eval.device's rules (auto, cpu, cuda[:N]; one this machine lacks is
              refused); lenx-lm-eval sets --device auto unless given (lm-eval's own default is cuda:0).
  batch_size  lm-eval's --batch_size: inputs per forward (a positive integer; there is no automatic size).

Tokens: a language model reads text with the tokenizer stored in its checkpoint (its hash checked against the one
its training recorded, lenx.checkpoint.stored_tokenizer); the prefix token is the end-of-document token that began
every training document. A task model (data=copy, ...) reads its symbols' names separated by whitespace, one token
each, after BOS: the form scripts/export_lm_eval_tasks.py writes instances in.

Every forward holds inputs of one length, unpadded (lenx's evaluator does the same): a scheme that reads the input's
length (factor-null RoPE scalings, dynamic NTK, Self-Extend's group) sees each input's own, so no number depends on
batch_size or on its batch. Log-probabilities are a log-softmax of fp32 logits, summed in fp64.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from itertools import groupby, pairwise

# lm-eval's own backends are registered first: its get_model imports them only into an empty registry, so
# registering "lenx" before them would hide "hf" and the rest from the same process
import lm_eval.models  # noqa: F401
import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tokenizers import Tokenizer
from tqdm import tqdm

from lenx.checkpoint import read_checkpoint, rebuild, stored_tokenizer
from lenx.configs import build_extension
from lenx.data import EOD_TOKEN
from lenx.errors import ConfigError, check_int, user_errors
from lenx.extensions import check_applies
from lenx.hardware import eval_autocast, resolve_device
from lenx.results import git_state, scaling_name
from lenx.tasks import BOS, Task, build_task

ARGS = ("ckpt", "max_length", "scaling", "extension", "precision", "device", "batch_size")
log = logging.getLogger(__name__)


def warn_cut(cut: int, total: int, n: int, what: str) -> None:
    if cut:  # as lm-eval's Hugging Face backend warns: a cut input is not the task's whole input
        log.warning("lenx: %d of %d %s longer than max_length=%d were cut from the left", cut, total, what, n)


class TextTokens:
    """A language model's BPE: the tokenizer file stored in its checkpoint."""

    def __init__(self, tok_json: str) -> None:
        self.tok = Tokenizer.from_str(tok_json)
        self.prefix_id = self.eot_id = self.tok.token_to_id(EOD_TOKEN)
        self.stop = EOD_TOKEN

    def encode(self, text: str, add_special_tokens: bool | None = None) -> list[int]:
        return self.tok.encode(text).ids  # lenx's BPE adds no special tokens

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids)


class SymbolTokens:
    """A task model's vocabulary (lenx.tasks): whitespace-separated symbol names, one token each, BOS first."""

    def __init__(self, task: Task) -> None:
        self.task, self.prefix_id = task, BOS
        self.eot_id, self.stop = task.eos_id, None  # (eos_id: None for a task without an end token)

    def encode(self, text: str, add_special_tokens: bool | None = None) -> list[int]:
        ids = []
        for word in text.split():
            if word not in self.task.vocab:
                raise ConfigError(f"{word!r} is not a symbol of the {self.task.name} task this model was trained on "
                                  f"(its text is symbol names separated by spaces: {' '.join(self.task.vocab[:6])} ...)")
            ids.append(self.task.id(word))
        return ([BOS] if add_special_tokens is not False and ids[:1] != [BOS] else []) + ids

    def decode(self, ids: list[int]) -> str:
        return "".join(f" {self.task.vocab[i]}" for i in ids)


def same_length_batches(lengths: list[int], size: int) -> Iterator[list[int]]:
    """Indices into `lengths`, longest first, in batches of at most `size` inputs that all have one length."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    for _, group in groupby(order, key=lengths.__getitem__):
        group = list(group)
        yield from (group[k:k + size] for k in range(0, len(group), size))


@register_model("lenx")
class LenxLM(TemplateLM):
    """A lenx checkpoint behind lm-eval's LM interface (loglikelihood, loglikelihood_rolling, generate_until)."""

    def __init__(self, ckpt=None, max_length=None, scaling=None, extension=None, precision="32", device=None,
                 batch_size=1, max_batch_size=None, **unknown) -> None:
        super().__init__()
        if unknown:  # (max_batch_size: lm-eval passes it for its automatic batch size; lenx has none)
            raise ConfigError(f"unknown lenx model argument(s) {', '.join(sorted(unknown))}; known: {', '.join(ARGS)}")
        if not ckpt:
            raise ConfigError("the lenx backend needs ckpt=<run>/checkpoints/last.ckpt in --model_args")
        self._device = resolve_device("auto" if device is None else str(device), "device")
        self.precision = str(precision)
        eval_autocast(self.precision, self._device, "precision")  # a value eval.precision takes
        if isinstance(batch_size, str) and batch_size.strip().isdigit():
            batch_size = int(batch_size)  # (lm-eval's CLI passes it as text)
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer (the lenx backend has no automatic batch size), "
                              f"got {batch_size!r}")
        self._batch_size = batch_size
        if max_length is not None:
            check_int(max_length, "max_length")
        state = read_checkpoint(ckpt)
        model, cfg = rebuild(state, scaling, str(ckpt))  # a scaling the scheme does not take: refused here
        label, ext = build_extension("none" if extension is None else extension, cfg["seq_len"])
        scheme = (cfg.get("choices") or {}).get("pos", cfg["pos"]["_target_"])
        check_applies(ext, model.pos, scheme, model.layer_modifiers)
        model.extension = None if label == "none" else ext
        task = build_task(cfg)
        self.tok = SymbolTokens(task) if task else TextTokens(stored_tokenizer(state, cfg, str(ckpt)))
        self.model, self.cfg, self._max_length = model.to(self._device), cfg, max_length or cfg["seq_len"]
        self.info = {"lenx_ckpt": str(ckpt), "lenx_pos": scheme, "lenx_scaling": scaling_name(cfg),
                     "lenx_extension": label, "lenx_train_len": cfg["seq_len"], "lenx_max_length": self._max_length,
                     "lenx_precision": self.precision, "lenx_git_sha": git_state()[0],
                     "lenx_tokenizer_hash": (cfg.get("provenance") or {}).get("tokenizer_hash", "")}

    # ------------------------------------------------------------------------------------ what lm-eval reads
    @property
    def eot_token_id(self) -> int | None:  # None: a task model without an end token
        return self.tok.eot_id

    @property
    def prefix_token_id(self) -> int:
        return self.tok.prefix_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return 256  # lm-eval's default; a task's gen_kwargs (max_gen_toks) override it

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def tokenizer_name(self) -> str:
        return f"lenx-{self.info['lenx_tokenizer_hash'][:16] or self.cfg['data'].get('name')}"

    def get_model_info(self) -> dict:
        return dict(self.info)  # lm-eval writes it into its results' config (provenance)

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.tok.encode(string, add_special_tokens)

    def tok_decode(self, tokens: list[int], **kwargs) -> str:
        return self.tok.decode(tokens)

    # ---------------------------------------------------------------------------------------------- scoring
    @torch.no_grad()
    def _logits(self, rows: list[list[int]], last: int) -> torch.Tensor:
        """fp32 logits (B, last, V) at the last `last` positions of equal-length token rows."""
        with eval_autocast(self.precision, self._device, "precision"):
            logits_BTV = self.model(torch.tensor(rows, dtype=torch.long, device=self._device))
        return logits_BTV[:, -last:].float()

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """(log p(continuation | context), continuation is the argmax at every token) for (key, context tokens,
        continuation tokens) requests; the input is (context + continuation)[-(max_length + 1):][:-1], as in lm-eval's
        Hugging Face backend, scored at the continuation's positions."""
        inputs = []
        for _, ctx, cont in requests:
            if len(cont) > self.max_length:
                raise ConfigError(f"a continuation of {len(cont)} tokens is longer than max_length={self.max_length}")
            inputs.append((ctx + cont)[-(self.max_length + 1):][:-1])
        warn_cut(sum(len(c) + len(x) > self.max_length + 1 for _, c, x in requests), len(requests), self.max_length,
                 "inputs")
        out: list = [None] * len(requests)
        batches = list(same_length_batches([len(x) for x in inputs], self.batch_size))
        for batch in tqdm(batches, disable=disable_tqdm, desc="lenx: loglikelihood"):
            n = max(len(requests[i][2]) for i in batch)
            logp_BNV = F.log_softmax(self._logits([inputs[i] for i in batch], n), dim=-1)
            for logp_NV, i in zip(logp_BNV, batch):
                (key, _, cont), y_N = requests[i], torch.tensor(requests[i][2], device=self._device)
                logp_NV = logp_NV[len(logp_NV) - len(cont):]  # (an empty continuation: nothing, log p = 0)
                out[i] = (logp_NV.gather(-1, y_N[:, None]).double().sum().item(),
                          bool((logp_NV.argmax(-1) == y_N).all()))
                if key is not None:
                    self.cache_hook.add_partial("loglikelihood", key, out[i])
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Each document's log-likelihood over lm-eval's rolling windows of max_length tokens (every token scored
        once; the first window starts after the prefix token)."""
        windows, owner = [], []
        for r, req in enumerate(requests):
            tokens = self.tok_encode(req.args[0], add_special_tokens=False)  # the prefix token plays BOS
            for ctx, cont in map(make_disjoint_window, get_rolling_token_windows(
                    token_list=tokens, prefix_token=self.prefix_token_id, max_seq_len=self.max_length, context_len=1)):
                windows.append((None, ctx, cont))
                owner.append(r)
        totals = [0.0] * len(requests)
        for r, (ll, _) in zip(owner, self._loglikelihood_tokens(windows, disable_tqdm)):
            totals[r] += ll
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations, stopped at the first stop sequence, the end token or max_gen_toks. The context is
        cut to its last max_length - max_gen_toks tokens, as lm-eval's Hugging Face backend cuts it, so context and
        generation fit in max_length (where max_gen_toks >= max_length, each token reads the last max_length
        instead). There is no KV cache: every new token is one forward over the whole sequence so far, so g tokens
        cost g forwards of up to max_length tokens (requests of one length share them)."""
        ids, stops, budget, cut = [], [], [], 0
        for context, gen_kwargs in (req.args for req in requests):
            kwargs = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
            if kwargs.get("do_sample"):
                raise ConfigError("the lenx backend decodes greedily: do_sample / temperature > 0 are not supported")
            keep, ctx = self.max_length - kwargs["max_gen_toks"], self.tok_encode(context) or [self.prefix_token_id]
            cut += 0 < keep < len(ctx)
            ids.append(ctx[-keep if keep > 0 else 0:])
            stops.append(handle_stop_sequences(kwargs["until"], eos=self.tok.stop))
            budget.append(kwargs["max_gen_toks"])
        warn_cut(cut, len(requests), self.max_length, "contexts (with max_gen_toks)")
        gen: list[list[int]] = [[] for _ in requests]
        live = [i for i in range(len(requests)) if budget[i] > 0]
        with tqdm(total=sum(budget), disable=disable_tqdm, desc="lenx: generate_until") as bar:
            while live:
                rows = {i: (ids[i] + gen[i])[-self.max_length:] for i in live}
                for batch in same_length_batches([len(rows[i]) for i in live], self.batch_size):
                    batch = [live[k] for k in batch]
                    for i, t in zip(batch, self._logits([rows[i] for i in batch], 1)[:, -1].argmax(-1).tolist()):
                        gen[i].append(t)
                bar.update(len(live))
                live = [i for i in live if gen[i][-1] != self.eot_token_id and len(gen[i]) < budget[i]
                        and not any(s and s in self.tok_decode(gen[i]) for s in stops[i])]
        out = []
        for i, req in enumerate(requests):
            text = self.tok_decode([t for t in gen[i] if t != self.eot_token_id])
            out.append(postprocess_generated_text(text, stops[i], None))
            self.cache_hook.add_partial("generate_until", req.args, out[-1])
        return out


def main() -> None:
    """`lenx-lm-eval`: lm-eval's own command line (`lm_eval.__main__.cli_evaluate`, every option of it) with the
    lenx backend registered. With `--model lenx` and no --device, --device is auto (lenx's eval.device default)
    rather than lm-eval's cuda:0. A lenx error (bad model argument, missing checkpoint, ...) is one
    `lenx: error:` line, exit status 2."""
    from lm_eval.__main__ import cli_evaluate

    args = sys.argv[1:]
    model = next((b for a, b in pairwise(args) if a in ("--model", "-M")), None) or next(
        (a.split("=", 1)[1] for a in args if a.startswith("--model=")), None)
    if model == "lenx" and not any(a == "--device" or a.startswith("--device=") for a in args):
        sys.argv.append("--device=auto")
    with user_errors():
        cli_evaluate()


if __name__ == "__main__":
    main()
