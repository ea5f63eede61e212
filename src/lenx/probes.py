"""Long-context probes beyond perplexity.

Repeated segment (induction) probe: a random segment of `seg_len` tokens is placed at distance d before its
repetition (d from 0.5x to 16x the training length, random tokens in between). A model that can reach back d
tokens copies the repetition (low NLL); one that cannot predicts it no better than the control, where the
first occurrence is replaced by other random tokens. Cf. induction heads (Olsson et al. 2022, arXiv:2209.11895)
and passkey-style retrieval probes (Mohtashami & Jaggi 2023, arXiv:2305.16300).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lenx.errors import OutOfRangeError


@torch.no_grad()
def repeat_segment(model: torch.nn.Module, *, vocab_size: int, train_len: int, multipliers: list[float],
                   seg_len: int, trials: int, device: torch.device, seed: int = 0) -> list[dict]:
    """One row per distance: mean NLL on the repeated segment (its tokens after the first) and on the control."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    model.eval()
    for m in multipliers:
        d = max(seg_len, int(m * train_len))
        seq_BT = torch.randint(1, vocab_size, (trials, d + seg_len), generator=g)  # id 0 is end-of-document
        seq_BT[:, d:] = seq_BT[:, :seg_len]  # the repetition, d tokens after the original
        control_BT = seq_BT.clone()
        control_BT[:, :seg_len] = torch.randint(1, vocab_size, (trials, seg_len), generator=g)
        nll, status = {}, "ok"
        try:
            for name, x_BT in (("repeat", seq_BT), ("control", control_BT)):
                x_BT = x_BT.to(device)
                logits_BTV = model(x_BT[:, :-1]).float()
                targets = slice(d, d + seg_len - 1)  # repetition tokens 1..seg_len-1 predicted from their prefix
                nll[name] = F.cross_entropy(logits_BTV[:, targets].flatten(0, 1), x_BT[:, d + 1:].flatten()).item()
        except OutOfRangeError:  # a learned table shorter than d + seg_len
            nll, status = {"repeat": math.nan, "control": math.nan}, "out_of_range"
        rows.append({"multiplier": m, "distance": d, "seg_len": seg_len, "trials": trials,
                     "nll_repeat": nll["repeat"], "nll_control": nll["control"],
                     "copy_gain": nll["control"] - nll["repeat"], "status": status})
    return rows
