"""A small pre-norm decoder-only transformer with a pluggable positional scheme: Attention, Block, Decoder.

How attention runs (fused causal kernel, masked chunks of queries, the mask's dtype) is lenx.attention's plan; what
the positions contribute is the scheme's (lenx.pos). Positions (lenx.positions): the default 0..T-1, one vector
shared by the batch, one row per example (a scheme's batched context where it has one, else each group of equal
rows on the shared path), or a draw per attention layer (randomized positions, Ruoss et al. 2023, arXiv:2305.16843).
Shapes: B batch, T sequence (queries), S keys, H heads, D head dim, C model width, V vocabulary.
The model never limits the input length: only a learned position table may refuse a position (OutOfRangeError).
Attention modifiers (config `attn`: scalable softmax, learned sinks; lenx.attention.Modifiers) are parameters of each
layer's Attention and a part of the plan, composable with every scheme. The block's norms and MLP (GPT-2's or
Llama's; config `model.norm`, `model.mlp`) are lenx.block's.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lenx import attention
from lenx.block import GPT2, RESIDUAL_OUTPUTS, BlockShape
from lenx.errors import ConfigError, check_int
from lenx.hardware import denormals_flushed
from lenx.pos.base import AttnContext, PositionalScheme
from lenx.pos.bias import DistanceBias, distance_draw_contexts
from lenx.positions import LayerDraws


def reads_positions_in_attention(pos: PositionalScheme) -> bool:
    """Whether the scheme's attention reads positions (a context, rotation or logit terms of its own)."""
    return any(getattr(type(pos), h) is not getattr(PositionalScheme, h)
               for h in ("context", "rotate", "bias", "score", "value"))


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float, bias: bool,
                 modifiers: attention.Modifiers = attention.NO_MODIFIERS) -> None:
        super().__init__()
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.proj = nn.Linear(d_model, d_model, bias=bias)
        self.dropout = dropout
        if modifiers.ssmax:  # SSMax's s_h, initialised to 1 (OLMo-core PR #808; arXiv:2501.19399)
            self.ssmax_H = nn.Parameter(torch.ones(n_heads))
        if modifiers.sinks:  # gpt-oss's sinks: one logit per head, N(0, initializer_range = 0.02)
            self.sink_H = nn.Parameter(torch.empty(n_heads).normal_(0.0, 0.02))
        if modifiers.forget:  # FoX's fgate_proj: Linear(C, H) with bias (init N(0, 0.02), bias 0: Decoder._init)
            self.fgate = nn.Linear(d_model, n_heads, bias=True)
        if modifiers.dape:  # DAPE's mlp2, Linear(2H, W) -> LeakyReLU -> Linear(W, H), PyTorch's default init
            # (U(+-1/sqrt(fan_in)) for weights and biases), as raw parameters: the Decoder's N(0, 0.02) init of
            # Linear modules would not be the authors'
            W, fan = attention.DAPE_WIDTH, (2 * n_heads, attention.DAPE_WIDTH)
            self.dape_w1 = nn.Parameter(torch.empty(2 * n_heads, W).uniform_(-fan[0] ** -0.5, fan[0] ** -0.5))
            self.dape_b1 = nn.Parameter(torch.empty(W).uniform_(-fan[0] ** -0.5, fan[0] ** -0.5))
            self.dape_w2 = nn.Parameter(torch.empty(W, n_heads).uniform_(-fan[1] ** -0.5, fan[1] ** -0.5))
            self.dape_b2 = nn.Parameter(torch.empty(n_heads).uniform_(-fan[1] ** -0.5, fan[1] ** -0.5))
        # FoX's "Pro" block (lenx.modifiers.Modifiers): norms init to ones, projections N(0, 0.02) (Decoder._init)
        if modifiers.qk_norm:
            self.q_norm_C, self.k_norm_C = nn.Parameter(torch.ones(d_model)), nn.Parameter(torch.ones(d_model))
        if modifiers.kv_shift:
            self.k_shift, self.v_shift = nn.Linear(d_model, n_heads, bias=False), nn.Linear(d_model, n_heads,
                                                                                            bias=False)
        if modifiers.output_norm:
            self.out_norm_C = nn.Parameter(torch.ones(d_model))
        if modifiers.output_gate:
            self.out_gate = nn.Linear(d_model, d_model, bias=False)

    def modifier_params(self, x_BTC: torch.Tensor) -> attention.ModifierParams | None:
        """This layer's learned parameters and inputs of the attention modifiers for input x (None when it has
        none): FoX's c = cumsum_t log sigmoid(fgate(x_t)) per head, fp32 (B, H, T), as the authors' log_lambda."""
        ssmax_H, sink_H, fgate = (getattr(self, n, None) for n in ("ssmax_H", "sink_H", "fgate"))
        dape = (self.dape_w1, self.dape_b1, self.dape_w2, self.dape_b2) if hasattr(self, "dape_w1") else None
        if ssmax_H is None and sink_H is None and fgate is None and dape is None:
            return None
        c_BHT = None if fgate is None else F.logsigmoid(fgate(x_BTC).float()).transpose(1, 2).cumsum(-1)
        return attention.ModifierParams(ssmax_H, sink_H, c_BHT, dape)

    def forward(self, x_BTC: torch.Tensor, pos: PositionalScheme, ctx: AttnContext,
                plan: attention.Plan) -> torch.Tensor:
        """Causal self-attention with the scheme's rotation, bias and score terms, (B, T, C) -> (B, T, C)."""
        B, T, C = x_BTC.shape
        if hasattr(self, "q_norm_C") or hasattr(self, "k_shift"):  # FoX's "Pro" q, k, v (lenx.modifiers)
            q_BHTD, k_BHTD, v_BHTD = self.pro_qkv(x_BTC)
        else:
            q_BHTD, k_BHTD, v_BHTD = self.qkv(x_BTC).view(B, T, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if plan.q_scale_T is not None:  # log-n scaling of the queries (an extension)
            q_BHTD = q_BHTD * plan.q_scale_T[:, None].to(q_BHTD.dtype)
        raw = (q_BHTD, k_BHTD)
        q_BHTD, k_BHTD = pos.rotate(q_BHTD, k_BHTD, ctx)
        y_BHTD = attention.attend(q_BHTD, k_BHTD, v_BHTD, pos, ctx, plan, self.dropout if self.training else 0.0,
                                  raw, self.modifier_params(x_BTC))
        y_BTC = y_BHTD.transpose(1, 2).reshape(B, T, C)
        if hasattr(self, "out_norm_C"):  # FoX's output_norm (eps = norm_eps 1e-6), then its output gate
            y_BTC = attention.group_rms_norm(y_BTC, self.out_norm_C, self.n_heads, 1e-6)
        if hasattr(self, "out_gate"):
            y_BTC = y_BTC * torch.sigmoid(self.out_gate(x_BTC))
        return self.proj(y_BTC)

    def pro_qkv(self, x_BTC: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """q, k, v (B, H, T, D) as FoX's "Pro" layer makes them: k and v shifted, then q and k normed per head."""
        B, T, C = x_BTC.shape
        q_BTC, k_BTC, v_BTC = self.qkv(x_BTC).split(C, dim=-1)
        if hasattr(self, "k_shift"):  # ShiftLinear: sigmoid of a projection of x, per head
            k_BTC = attention.token_shift(k_BTC, torch.sigmoid(self.k_shift(x_BTC).float()), self.n_heads)
            v_BTC = attention.token_shift(v_BTC, torch.sigmoid(self.v_shift(x_BTC).float()), self.n_heads)
        if hasattr(self, "q_norm_C"):  # GroupRMSNorm's default eps 1e-5 (the authors pass none for q_norm / k_norm)
            q_BTC = attention.group_rms_norm(q_BTC, self.q_norm_C, self.n_heads, 1e-5)
            k_BTC = attention.group_rms_norm(k_BTC, self.k_norm_C, self.n_heads, 1e-5)
        return tuple(t.view(B, T, self.n_heads, self.head_dim).transpose(1, 2) for t in (q_BTC, k_BTC, v_BTC))


class Block(nn.Module):
    """Pre-norm residual block; its norms and MLP are those `shape` describes (lenx.block: gpt2 or llama)."""

    def __init__(self, d_model: int, n_heads: int, mlp_ratio: float, dropout: float, bias: bool,
                 modifiers: attention.Modifiers = attention.NO_MODIFIERS, shape: BlockShape = GPT2) -> None:
        super().__init__()
        self.ln1 = shape.make_norm(d_model, bias)  # ln1 / ln2 whatever the norm: one set of key names
        self.attn = Attention(d_model, n_heads, dropout, bias, modifiers)
        self.ln2 = shape.make_norm(d_model, bias)
        self.mlp = shape.make_mlp(d_model, mlp_ratio, dropout, bias)

    def forward(self, x_BTC, pos, ctx, plan):
        x_BTC = x_BTC + self.attn(self.ln1(x_BTC), pos, ctx, plan)
        return x_BTC + self.mlp(self.ln2(x_BTC))


class Decoder(nn.Module):
    """Token embedding -> pos.embed -> n_layers pre-norm blocks -> final norm -> unembedding (tied by default).
    `norm`, `mlp`, `multiple_of`: the block's shape (lenx.block.BlockShape; the defaults are GPT-2's)."""

    def __init__(self, *, vocab_size: int, d_model: int, n_layers: int, n_heads: int,
                 pos: Callable[..., PositionalScheme], train_len: int, mlp_ratio: float = 4.0,
                 dropout: float = 0.0, bias: bool = False, tie_embeddings: bool = True,
                 attn: dict | None = None, norm: str = "layernorm", mlp: str = "gelu", multiple_of: int = 256) -> None:
        super().__init__()
        for name, v in dict(vocab_size=vocab_size, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                            train_len=train_len).items():
            check_int(v, name)
        if d_model % n_heads:
            raise ConfigError(f"n_heads={n_heads} does not divide d_model={d_model}")
        # attention modifiers (config attn: lenx.modifiers.Modifiers), checked before anything is built
        modifiers = attention.Modifiers.from_config(attn)
        shape = BlockShape(norm, mlp, multiple_of)
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = pos(d_model=d_model, n_heads=n_heads, head_dim=d_model // n_heads, train_len=train_len,
                       n_layers=n_layers)
        # each layer's: the config's, with those the scheme brings to the layer (FoX's gate, a hybrid's window)
        self.layer_modifiers = [modifiers.merged(self.pos.attention_at(n), f"pos={type(self.pos).__name__}")
                                for n in range(n_layers)]
        self.modifiers = modifiers  # the config's own (`attn`)
        self.drop = nn.Dropout(dropout)
        self.extension = None  # a training-free extension (lenx.extensions), set to score a trained model under it
        # lenx.attention.ATTENTION: sdpa (the fastest exact path), flex (FlexAttention for distance biases) or
        # reference (the float-mask paths, for tests and benchmarks); config `attention`, eval.attention
        self.attention = "sdpa"
        # Where default positions start: SHAPE's evaluation offset K for positions=offset (lenx.positions), set by
        # checkpoint.build_model from the run's config; 0 otherwise. Schemes that are shift invariant ignore it.
        self.position_offset = 0
        self.blocks = nn.ModuleList(Block(d_model, n_heads, mlp_ratio, dropout, bias, self.layer_modifiers[n], shape)
                                    for n in range(n_layers))
        self.ln_f = shape.make_norm(d_model, bias)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        if tie_embeddings:
            self.head.weight = self.tok.weight
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by 1/sqrt(2 * n_layers)
            if name.endswith(RESIDUAL_OUTPUTS):
                nn.init.normal_(p, std=0.02 / (2 * n_layers) ** 0.5)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    def forward(self, idx_BT: torch.Tensor, pos_T: torch.Tensor | LayerDraws | None = None) -> torch.Tensor:
        """Logits (B, T, V) for token ids (B, T). Positions: None (0..T-1, or from `position_offset` for a scheme
        that feels a shift), (T,) shared by the batch, (B, T) one row per example (`forward_rows`), or LayerDraws
        (lenx.positions: randomized positions drawn again for each attention layer)."""
        if isinstance(pos_T, torch.Tensor) and pos_T.dim() == 2:
            return self.forward_rows(idx_BT, pos_T)
        B, T = idx_BT.shape
        draws = pos_T if isinstance(pos_T, LayerDraws) else None
        if draws is not None:
            pos_T = draws.embed_T  # sin/cos and learned tables draw once, at the input (Ruoss et al. 2023)
        contiguous = pos_T is None
        if contiguous and self.position_offset and not self.pos.shift_invariant:  # SHAPE's evaluation offset
            pos_T, contiguous = torch.arange(T, device=idx_BT.device) + self.position_offset, False
        elif contiguous:
            pos_T = torch.arange(T, device=idx_BT.device)
        x_BTC = self.drop(self.pos.embed_tokens(self.pos.embed(self.tok(idx_BT), pos_T), idx_BT))
        dtype = attention.compute_dtype(x_BTC)
        if draws is None:
            ctx = self.pos.context(pos_T, pos_T)  # once per forward, shared by every layer
        else:  # each layer's own draw: its positions, or its distances placed Toeplitz
            drawn = self.layer_draw_contexts(draws)
        plans = {}  # one plan per forward and kind of layer (its modifiers): layers alike share it, and its mask
        # scoring on CPU: far keys' softmax terms underflow into slow denormals (lenx.hardware.denormals_flushed)
        with denormals_flushed(idx_BT.device.type == "cpu" and not torch.is_grad_enabled()):
            for layer, block in enumerate(self.blocks):
                if draws is not None:
                    ctx, at_default = drawn[layer]
                    plans = {}
                kind = self.layer_modifiers[layer]
                if kind not in plans:
                    plans[kind] = attention.plan(self.pos, ctx, batch=B, dtype=dtype,
                                                 contiguous=contiguous if draws is None else at_default,
                                                 extension=self.extension, **self.plan_settings(layer))
                ctx_l = ctx.at_layer(layer)
                # the whole mask, where one chunk holds it: once per forward and kind of layer
                plans[kind] = plan = attention.for_layer(plans[kind], self.pos, ctx_l)
                x_BTC = block(x_BTC, self.pos, ctx_l, plan)
        return self.head(self.ln_f(x_BTC))

    def layer_draw_contexts(self, draws: LayerDraws) -> list[tuple[AttnContext, bool]]:
        """Each attention layer's context under randomized positions drawn per layer (Ruoss et al. 2023,
        arXiv:2305.16843; lenx.positions.Randomized), and whether it is at default positions: the context of the
        layer's drawn positions, as the authors' NOISY_ROTARY draws per layer; for a bias of the distance alone,
        the table of the layer's drawn distances placed Toeplitz (lenx.pos.bias.distance_draw_contexts). All
        layers at once, before any runs."""
        layers = range(len(self.blocks))
        if isinstance(self.pos, DistanceBias):
            return [(c, True) for c in distance_draw_contexts(self.pos, torch.stack([draws.distances(n)
                                                                                     for n in layers]))]
        return [(self.pos.context(p_T, p_T), False) for p_T in (draws.positions(n) for n in layers)]

    def plan_settings(self, layer: int = 0) -> dict:
        """What the attention plan needs from the model: the `attention` setting, this forward's dropout and the
        attention modifiers of `layer`."""
        return {"attention": self.attention, "dropout": self.blocks[0].attn.dropout if self.training else 0.0,
                "modifiers": self.layer_modifiers[layer]}

    def forward_rows(self, idx_BT: torch.Tensor, pos_BT: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, V) with one row of positions per example (PoSE's and SHAPE's per-example draws): each
        group of examples whose rows are equal runs the shared-positions path, so every scheme and attention path
        holds as it is; the logits are put back in the batch's order."""
        rows_GT, group_B = torch.unique(pos_BT, dim=0, return_inverse=True)
        if len(rows_GT) == 1:
            return self.forward(idx_BT, rows_GT[0])
        # A scheme with a batched form (RoPE's cos/sin per example, or no positions in attention: NoPE, absolute
        # tables) runs the batch at once: fused causal attention only (no logit terms), no extension, no attention
        # modifiers (SSMax's n and the plan read one row of positions)
        plain = not (self.pos.adds_bias or self.pos.adds_logits or self.pos.adds_values) and self.extension is None \
            and not any(m.any for m in self.layer_modifiers)
        ctx = None
        if plain and self.pos.rows_in_context:
            ctx = self.pos.context(pos_BT, pos_BT)
        elif plain and not reads_positions_in_attention(self.pos):  # NoPE, the absolute schemes: any row's
            ctx = self.pos.context(pos_BT[0], pos_BT[0])
        if ctx is not None:
            x_BTC = self.drop(self.pos.embed_tokens(self.pos.embed(self.tok(idx_BT), pos_BT), idx_BT))
            plan = attention.plan(self.pos, ctx, batch=len(idx_BT), dtype=attention.compute_dtype(x_BTC),
                                  contiguous=False, **self.plan_settings())
            if plan.path == "causal":
                with denormals_flushed(idx_BT.device.type == "cpu" and not torch.is_grad_enabled()):
                    for layer, block in enumerate(self.blocks):
                        x_BTC = block(x_BTC, self.pos, ctx.at_layer(layer), plan)
                return self.head(self.ln_f(x_BTC))
        order_B = torch.argsort(group_B, stable=True)
        sizes = torch.bincount(group_B, minlength=len(rows_GT)).tolist()
        parts = [self.forward(ids_bT, row_T) for ids_bT, row_T in zip(idx_BT[order_B].split(sizes), rows_GT)]
        return torch.cat(parts)[torch.argsort(order_B)]

    def param_counts(self) -> dict[str, int]:
        """total; embedding: the token table, and the head where untied; positional: the scheme's own (tables,
        projections, FIRE's MLP); non_embedding: the rest, as Kaplan et al. (2020, arXiv:2001.08361) count N."""
        total = sum(p.numel() for p in self.parameters())
        emb = self.tok.weight.numel() + (0 if self.head.weight is self.tok.weight else self.head.weight.numel())
        positional = sum(p.numel() for p in self.pos.parameters())
        return {"total": total, "embedding": emb, "positional": positional, "non_embedding": total - emb - positional}

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.tok.weight.numel() if non_embedding else n
