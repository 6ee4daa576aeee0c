"""The Phi-3/Phi-4 decoder, laid out so its state dict loads unchanged into transformers' Phi3ForCausalLM."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from phiforge.config import ModelConfig
from phiforge.errors import PhiforgeError
from phiforge.rundir import atomic_path, atomic_write_json


class KVCache:
    """Fixed-capacity per-layer K/V buffers [B, n_kv_heads, max_len, head_dim]: a decode step writes one slot.

    Allocated on a layer's first update from the keys themselves: under autocast they are bf16, the weights fp32.
    """

    def __init__(self, n_layers: int, max_len: int):
        self.max_len = max_len
        self.length = 0
        self.k: list[torch.Tensor | None] = [None] * n_layers
        self.v: list[torch.Tensor | None] = list(self.k)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v [B, n_kv_heads, T, head_dim] at the current length; return everything cached so far."""
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KVCache overflow: {end} positions needed, capacity is {self.max_len}")
        if self.k[layer] is None:
            shape = (k.shape[0], k.shape[1], self.max_len, k.shape[3])
            self.k[layer], self.v[layer] = k.new_zeros(shape), v.new_zeros(shape)
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, n: int) -> None:
        # Called by the model once every layer has written, so all layers see the same offset within a forward.
        self.length += n

    def place(self, rows: torch.Tensor, batch: int, other: KVCache, end: int) -> None:
        """Copy everything `other` holds into rows `rows` of a `batch`-row cache, its last position in slot end - 1.

        Lets rows be prefilled in separate, shorter batches and then decoded together; the caller sets `length`.
        Slots that nothing was placed in stay zero, so they must be masked out as padding.
        """
        start = end - other.length
        for mine, theirs in ((self.k, other.k), (self.v, other.v)):
            for i, t in enumerate(theirs):
                if mine[i] is None:
                    mine[i] = t.new_zeros((batch, t.shape[1], self.max_len, t.shape[3]))
                mine[i][rows, :, start:end] = t[:, :, : other.length]

    def select(self, batch_indices: torch.Tensor) -> None:
        """Keep only the given batch rows (e.g. drop finished sequences during generation)."""
        for store in (self.k, self.v):
            for i, t in enumerate(store):
                if t is not None:
                    store[i] = t.index_select(0, batch_indices.to(t.device))


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32 and not torch.compiler.is_compiling():
            # The residual stream is fp32 even under autocast. Every consumer of a norm is a linear layer, which
            # autocast would feed a bf16 copy of the output anyway, so write that copy directly.
            dev = x.device.type
            out_dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
            if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
                return _RMSNormFn.apply(x, self.weight, self.eps, out_dtype)
            return _rms_norm(x, self.weight, self.eps, out_dtype)[0]
        # Otherwise normalise in fp32 and cast back before the weight, exactly as Phi3RMSNorm does.
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def _rms_norm(x, weight, eps: float, out_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """weight * x / rms(x) for fp32 x, rounded once to out_dtype, and the 1/rms factors [..., 1]."""
    r = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(x.shape[-1]).add_(eps).rsqrt_()
    h = x * r
    if out_dtype == x.dtype:
        return h.mul_(weight), r
    return torch.mul(h, weight, out=torch.empty(x.shape, dtype=out_dtype, device=x.device)), r


class _RMSNormFn(torch.autograd.Function):
    """RMSNorm in three passes forward and about seven backward, against about six and fifteen for autograd of the
    composite F.rms_norm (CPU has no fused kernel) plus autocast's cast of its output."""

    @staticmethod
    def forward(ctx, x, weight, eps: float, out_dtype: torch.dtype):
        y, r = _rms_norm(x, weight, eps, out_dtype)
        ctx.save_for_backward(x, weight, r)
        return y

    @staticmethod
    def backward(ctx, g):
        x, weight, r = ctx.saved_tensors
        h = x * r
        d_weight = (g * h).sum_to_size(weight.shape) if ctx.needs_input_grad[1] else None
        # With h = x * r and r = (mean(x^2) + eps)^-1/2:  dx = r * (dh - h * mean(dh * h)),  dh = g * weight.
        dh = g * weight
        mean = torch.linalg.vecdot(dh, h, dim=-1).unsqueeze(-1).div_(x.shape[-1])
        return dh.addcmul_(h, mean, value=-1).mul_(r), d_weight, None, None


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, out: torch.Tensor, sign: int) -> None:
    """out = x rotated by +angle (sign 1) or -angle (sign -1, the transpose, for the backward pass).

    Non-interleaved ("rotate half") layout, as in HF Phi3: dimension i pairs with i + head_dim/2, and cos/sin are
    the half-width tables. Four half-width passes instead of rotate_half's neg + cat + three full-width ones.
    """
    half = x.shape[-1] // 2
    x1, x2, y1, y2 = x[..., :half], x[..., half:], out[..., :half], out[..., half:]
    torch.mul(x1, cos, out=y1)
    y1.addcmul_(x2, sin, value=-sign)
    torch.mul(x2, cos, out=y2)
    y2.addcmul_(x1, sin, value=sign)


def _split_rope_differentiable(qkv, cos, sin, n_q: int, n_kv: int, head_dim: int):
    """`_split_rope` in plain differentiable ops, for torch.compile (see `_hand_written_backward`)."""
    B, T, _ = qkv.shape
    heads = qkv.view(B, T, n_q + 2 * n_kv, head_dim)
    half = head_dim // 2
    x = heads[:, :, : n_q + n_kv]
    x1, x2 = x[..., :half], x[..., half:]
    qk = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).transpose(1, 2)
    return qk[:, :n_q], qk[:, n_q:], heads[:, :, n_q + n_kv :].transpose(1, 2)


def _hand_written_backward(t: torch.Tensor) -> bool:
    """Whether to use the autograd.Functions below: in eager training, yes; under torch.compile, no. Inductor derives
    and fuses the backward of plain ops itself, and on torch 2.11 + CUDA it computed wrong gradients through these
    Functions (their backward passes write into slices of one buffer): 0.5 vs 8.7 grad norm after 6 steps, measured
    on an H200."""
    return t.requires_grad and not torch.compiler.is_compiling()


def _split_rope(qkv, cos, sin, n_q: int, n_kv: int, head_dim: int):
    B, T, _ = qkv.shape
    heads = qkv.view(B, T, n_q + 2 * n_kv, head_dim)
    qk = qkv.new_empty((B, n_q + n_kv, T, head_dim))
    _rotate(heads[:, :, : n_q + n_kv], cos, sin, qk.transpose(1, 2), 1)
    return qk[:, :n_q], qk[:, n_q:], heads[:, :, n_q + n_kv :].transpose(1, 2)


class _SplitRope(torch.autograd.Function):
    """Fused qkv projection [B, T, (Hq + 2 Hkv) * D] -> roped q [B, Hq, T, D], roped k [B, Hkv, T, D], v.

    Autograd of split + rotate_half would cat the three gradients back together after a neg, a cat and five
    multiplies or adds per tensor; here the backward writes each gradient, rotated back, straight into its slot.
    q and k come out contiguous in [B, H, T, D], the layout attention and the KV cache read fastest.
    """

    @staticmethod
    def forward(ctx, qkv, cos, sin, n_q: int, n_kv: int, head_dim: int):
        ctx.save_for_backward(cos, sin)
        ctx.heads = (n_q, n_kv)
        return _split_rope(qkv, cos, sin, n_q, n_kv, head_dim)

    @staticmethod
    def backward(ctx, gq, gk, gv):
        cos, sin = ctx.saved_tensors
        n_q, n_kv = ctx.heads
        ref = next(g for g in (gq, gk, gv) if g is not None)
        B, _, T, D = ref.shape
        grad = ref.new_empty((B, T, n_q + 2 * n_kv, D))
        for g, slot in ((gq, slice(0, n_q)), (gk, slice(n_q, n_q + n_kv))):
            if g is None:
                grad[:, :, slot].zero_()
            else:
                _rotate(g.transpose(1, 2), cos, sin, grad[:, :, slot], -1)
        if gv is None:
            grad[:, :, n_q + n_kv :].zero_()
        else:
            grad[:, :, n_q + n_kv :].copy_(gv.transpose(1, 2))
        return grad.view(B, T, -1), None, None, None, None, None


class _SwiGLU(torch.autograd.Function):
    """up * silu(gate) from the fused [gate | up] projection, saving only that projection for the backward.

    Autograd would also keep silu(gate) alive and cat the two gradient halves; this writes them in place.
    """

    @staticmethod
    def forward(ctx, gate_up):
        gate, up = gate_up.chunk(2, dim=-1)
        ctx.save_for_backward(gate_up)
        return up * F.silu(gate)

    @staticmethod
    def backward(ctx, g):
        (gate_up,) = ctx.saved_tensors
        gate, up = gate_up.chunk(2, dim=-1)
        grad = torch.empty_like(gate_up)
        d_gate, d_up = grad.chunk(2, dim=-1)
        torch.mul(g, F.silu(gate), out=d_up)
        torch.ops.aten.silu_backward.grad_input(g * up, gate, grad_input=d_gate)
        return grad


# Query rows per block of _BlockCausalAttention, and the longest sequence it takes: it keeps the (causal half of
# the) attention probabilities for the backward, O(T^2) memory that flash attention avoids, so long sequences go
# to the fused kernel. 64 was fastest at T = 256 and 512 (1.25-1.4x over 128; 32 is slower again).
_ATTN_BLOCK, _ATTN_MAX_LEN = 64, 1024


def _causal_bias(start: int, end: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    q = torch.arange(start, end, device=device)[:, None]
    k = torch.arange(end, device=device)[None, :]
    return torch.zeros((end - start, end), dtype=dtype, device=device).masked_fill_(k > q, float("-inf"))


class _BlockCausalAttention(torch.autograd.Function):
    """Causal softmax(q k^T / sqrt(D)) v for training on CPU, in blocks of query rows that each see only the keys
    up to their own end, so the masked upper triangle is mostly never computed.

    On CPU the fused flash kernel runs its bf16 backward at a fraction of matmul speed; batched matmuls on the
    causal blocks plus the saved probabilities do the same work about twice as fast at these lengths. Scores and
    probabilities are in the input dtype, as in HF's eager attention; gradients measured against an fp32 reference
    are no less accurate than flash's.
    """

    @staticmethod
    def forward(ctx, q, k, v):
        B, H, T, D = q.shape
        scale = D**-0.5
        q3, k3, v3 = (t.reshape(B * H, T, D) for t in (q, k, v))
        out = q3.new_empty((B * H, T, D))
        probs = []
        for start in range(0, T, _ATTN_BLOCK):
            end = min(start + _ATTN_BLOCK, T)
            scores = torch.baddbmm(_causal_bias(start, end, q.dtype, q.device), q3[:, start:end],
                                   k3[:, :end].transpose(1, 2), alpha=scale)
            p = torch.softmax(scores, dim=-1)
            torch.bmm(p, v3[:, :end], out=out[:, start:end])
            probs.append(p)
        ctx.save_for_backward(q3, k3, v3, *probs)
        ctx.scale = scale
        return out.view(B, H, T, D)

    @staticmethod
    def backward(ctx, g):
        q3, k3, v3, *probs = ctx.saved_tensors
        B, H, T, D = g.shape
        g3 = g.reshape(B * H, T, D)
        dq, dk, dv = torch.empty_like(q3), None, None
        # Last block first: it sees every key, so its products initialise dk and dv without zero-filling them.
        for p, start in reversed(list(zip(probs, range(0, T, _ATTN_BLOCK)))):
            end = min(start + _ATTN_BLOCK, T)
            g_blk, q_blk = g3[:, start:end], q3[:, start:end]
            d_scores = torch._softmax_backward_data(torch.bmm(g_blk, v3[:, :end].transpose(1, 2)), p, -1, p.dtype)
            if dk is None:
                dv, dk = torch.bmm(p.transpose(1, 2), g_blk), torch.bmm(d_scores.transpose(1, 2), q_blk)
            else:
                dv[:, :end].baddbmm_(p.transpose(1, 2), g_blk)
                dk[:, :end].baddbmm_(d_scores.transpose(1, 2), q_blk)
            torch.bmm(d_scores, k3[:, :end], out=dq[:, start:end])
        dq.mul_(ctx.scale)
        dk.mul_(ctx.scale)
        return dq.view(B, H, T, D), dk.view(B, H, T, D), dv.view(B, H, T, D)


def _onednn_linear_available() -> bool:
    """oneDNN's fp32 linear (the op inductor's CPU fusions call) exists in this torch build and agrees with
    F.linear; an internal op, so checked once rather than trusted."""
    try:
        op = torch.ops.mkldnn._linear_pointwise
        x, w = torch.randn(3, 2, 16, generator=torch.Generator().manual_seed(0)), torch.randn(8, 16)
        with torch.inference_mode():
            return bool(torch.backends.mkldnn.is_available() and
                        torch.allclose(op(x, w, None, "none", [None], ""), F.linear(x, w), rtol=1e-5, atol=1e-5))
    except (AttributeError, RuntimeError):
        return False


ONEDNN_LINEAR = _onednn_linear_available()


class Linear(nn.Linear):
    """nn.Linear that, while `DecodeLinears` switches it on, multiplies fp32 CPU inputs without autograd through
    oneDNN's linear instead of F.linear (which this torch build sends to MKL)."""

    onednn: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.onednn and x.dtype == torch.float32 and not torch.is_grad_enabled():
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [None], "")
        return F.linear(x, self.weight, self.bias)


class DecodeLinears:
    """Inside `with` blocks, a Phi3's linears run through oneDNN on CPU in fp32 without autograd: the generation
    engine's forward passes.

    On a CPU where torch's fp32 F.linear goes to MKL, whose GEMM is slow at the few rows of a decode step, oneDNN's
    is faster at every batch size (bench/README.md, KV-cache generation, has the figures); results differ from
    F.linear in the last bits only (fp32 accumulation order). Only for generation: training runs under bf16 autocast
    (already oneDNN), and scoring passes keep F.linear so a policy and its reference compute alike. The weights themselves are used as they are, so nothing is copied.
    """

    def __init__(self, model: nn.Module):
        on_cpu = next(model.parameters()).device.type == "cpu"
        # Plain weights only: an FSDP-sharded one (a DTensor) is whole only inside its block's own forward hooks.
        self.modules = [m for m in model.modules() if isinstance(m, Linear) and type(m.weight.data) is torch.Tensor
                        ] if ONEDNN_LINEAR and on_cpu else []

    def __enter__(self) -> DecodeLinears:
        for module in self.modules:
            module.onednn = True
        return self

    def __exit__(self, *exc) -> None:
        for module in self.modules:
            module.onednn = False


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        q_dim, kv_dim = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
        self.qkv_proj = Linear(cfg.d_model, q_dim + 2 * kv_dim, bias=False)
        self.o_proj = Linear(q_dim, cfg.d_model, bias=False)

    def forward(self, x, cos, sin, mask, causal, kv_cache):
        B, T, _ = x.shape
        qkv = self.qkv_proj(x)  # fused as [q heads | k heads | v heads]
        # cos/sin: half-width tables [T, 1, D/2] or [B, T, 1, D/2], cast here (they are tiny) to q's dtype. Without
        # autograd the plain function skips autograd.Function's overhead, which matters in a decode step.
        split_rope = (_SplitRope.apply if _hand_written_backward(qkv) else
                      _split_rope_differentiable if qkv.requires_grad else _split_rope)
        q, k, v = split_rope(qkv, cos.to(qkv.dtype), sin.to(qkv.dtype), self.n_heads, self.n_kv_heads, self.head_dim)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)
        y = self._attend(q, k, v, mask, causal)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))

    def _attend(self, q, k, v, mask, causal):
        groups = self.n_heads // self.n_kv_heads
        if causal and q.device.type == "cpu" and _hand_written_backward(q) and q.shape[2] <= _ATTN_MAX_LEN:
            if groups > 1:
                k, v = (t.repeat_interleave(groups, dim=1) for t in (k, v))
            return _BlockCausalAttention.apply(q, k, v)
        if causal:
            # On CUDA only the flash kernel (fp16/bf16) takes enable_gqa natively; elsewhere it would fall back
            # to the math kernel, so repeating K/V keeps the fused fp32 kernels. On CPU enable_gqa is fastest.
            if groups == 1 or not q.is_cuda or q.dtype in (torch.float16, torch.bfloat16):
                return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=groups > 1)
            k, v = (t.repeat_interleave(groups, dim=1) for t in (k, v))
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        # With a mask (cached decoding), fold each group of query heads into the query-length axis so every
        # query head shares its K/V head without copying the whole cache `groups` times per step.
        B, H, T, D = q.shape
        if groups > 1:
            q = q.reshape(B, self.n_kv_heads, groups * T, D)
            if mask is not None and T > 1:  # one query row broadcasts over the folded groups as it is
                mask = mask.repeat(1, 1, groups, 1)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return y.reshape(B, H, T, D)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_up_proj = Linear(cfg.d_model, 2 * cfg.d_ffn, bias=False)
        self.down_proj = Linear(cfg.d_ffn, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up_proj(x)
        if _hand_written_backward(gate_up):
            return self.down_proj(_SwiGLU.apply(gate_up))
        gate, up = gate_up.chunk(2, dim=-1)
        return self.down_proj(up * F.silu(gate))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.self_attn = Attention(cfg, layer_idx)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.rms_eps)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.rms_eps)

    def forward(self, x, cos, sin, mask, causal, kv_cache):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, causal, kv_cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class _Backbone(nn.Module):
    # Exists only so parameter names carry HF's "model." prefix.
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.rms_eps)


class Phi3(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.d_model % cfg.n_heads or cfg.n_heads % cfg.n_kv_heads or cfg.head_dim % 2:
            raise ValueError(f"d_model={cfg.d_model} must split into n_heads={cfg.n_heads} even-sized heads, "
                             f"and n_heads must be a multiple of n_kv_heads={cfg.n_kv_heads}")
        self.cfg = cfg
        self.model = _Backbone(cfg)
        self.lm_head = Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.register_buffer("rope_inv_freq", torch.empty(cfg.head_dim // 2), persistent=False)
        self.register_buffer("rope_cos", torch.empty(cfg.max_seq_len, cfg.head_dim), persistent=False)
        self.register_buffer("rope_sin", torch.empty(cfg.max_seq_len, cfg.head_dim), persistent=False)
        if self.lm_head.weight.device.type != "meta":  # on meta, call init_weights() after to_empty()
            self.init_weights()

    def _build_rope(self) -> None:
        device, hd = self.rope_cos.device, self.cfg.head_dim
        # Same formula and op order as HF's default RoPE, so the tables match Phi3RotaryEmbedding bit for bit.
        inv_freq = 1.0 / (self.cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float, device=device) / hd))
        cos, sin = self._rope_from_positions(torch.arange(self.cfg.max_seq_len, device=device), inv_freq)
        self.rope_inv_freq, self.rope_cos, self.rope_sin = inv_freq, cos, sin

    @staticmethod
    def _rope_from_positions(pos: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = torch.cat([pos[..., None].float() * inv_freq] * 2, dim=-1)
        return emb.cos(), emb.sin()

    def _apply(self, fn, recurse=True):
        # .to(bf16)/.half() would also cast the RoPE tables, and to_empty() leaves them uninitialised;
        # rebuild them in fp32 on whatever device the model now lives on.
        super()._apply(fn, recurse)
        if self.rope_cos.device.type != "meta":
            self._build_rope()
        return self

    @torch.no_grad()
    def init_weights(self) -> None:
        std = self.cfg.init_std
        # Residual-branch outputs are scaled down so the residual stream's variance does not grow with depth.
        out_std = std / math.sqrt(2 * self.cfg.n_layers)
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                is_out = name.endswith(("o_proj", "down_proj"))
                nn.init.normal_(module.weight, mean=0.0, std=out_std if is_out else std)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
        self._build_rope()

    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Parameter count; exclude_embeddings drops both the input embedding and the (untied) lm_head."""
        emb = self.model.embed_tokens.weight.numel() + self.lm_head.weight.numel() if exclude_embeddings else 0
        return sum(p.numel() for p in self.parameters()) - emb

    def forward(self, input_ids: torch.Tensor, *, position_ids: torch.Tensor | None = None,
                kv_cache: KVCache | None = None, attention_mask: torch.Tensor | None = None,
                last_only: bool = False, return_hidden: bool = False) -> torch.Tensor:
        """Logits [B, T, V] ([B, 1, V] with last_only, which spares prefill a [B, T, V] tensor); with return_hidden
        the final normed hidden states [B, T, d] instead, for a caller that needs logits at a few positions only
        (`head` makes them).

        attention_mask: bool [B, S], True for real tokens, over all S = cached + new key positions.
        """
        B, T = input_ids.shape
        offset, device = (kv_cache.length if kv_cache is not None else 0), input_ids.device
        S = offset + T

        if position_ids is not None:
            # Computed rather than gathered from the table: no host sync to range-check arbitrary positions.
            cos, sin = self._rope_from_positions(position_ids.view(-1, T), self.rope_inv_freq)
        elif S <= self.rope_cos.shape[0]:
            cos, sin = self.rope_cos[offset:S], self.rope_sin[offset:S]
        else:
            cos, sin = self._rope_from_positions(torch.arange(offset, S, device=device), self.rope_inv_freq)
        # Both halves of each table are equal; the layers take one half, with a broadcast axis for the heads.
        half = self.cfg.head_dim // 2
        cos, sin = cos[..., None, :half], sin[..., None, :half]

        causal, mask = False, None
        if attention_mask is not None:
            if attention_mask.shape != (B, S):
                raise ValueError(f"attention_mask must be [{B}, {S}] (cached + new), got {tuple(attention_mask.shape)}")
            mask = self._build_mask(attention_mask.to(device=device, dtype=torch.bool), T, offset, device)
        elif offset == 0:
            causal = True
        elif T > 1:
            mask = self._build_mask(None, T, offset, device)
        # else: one new token after a cache and no padding attends to everything, so no mask at all.

        x = self.model.embed_tokens(input_ids)
        for layer in self.model.layers:
            x = layer(x, cos, sin, mask, causal, kv_cache)
        if kv_cache is not None:
            kv_cache.advance(T)
        h = self.model.norm(x[:, -1:] if last_only else x)
        return h if return_hidden else self.lm_head(h)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits from `forward(..., return_hidden=True)`'s hidden states."""
        return self.lm_head(hidden)

    @property
    def vocab_size(self) -> int:
        return self.cfg.vocab_size

    @staticmethod
    def _build_mask(key_valid: torch.Tensor | None, T: int, offset: int, device: torch.device) -> torch.Tensor:
        if T == 1 and key_valid is not None:
            # A single query (a decode step) sits after every key, so only padding and its own slot matter.
            mask = key_valid.clone()
            mask[:, -1] = True
            return mask[:, None, None, :]
        q_slot = torch.arange(offset, offset + T, device=device)
        k_slot = torch.arange(offset + T, device=device)
        mask = k_slot[None, :] <= q_slot[:, None]  # [T, S]
        if key_valid is None:
            return mask[None, None]
        # Padding queries would otherwise see no key at all and turn the softmax into NaN; letting every query
        # see itself keeps them finite, and real tokens already see themselves.
        mask = (mask[None] & key_valid[:, None, :]) | (k_slot[None, :] == q_slot[:, None])[None]
        return mask[:, None]  # [B, 1, T, S]


# --- transformers-compatible export / import -------------------------------------------------------------------


def hf_config_dict(cfg: ModelConfig, bos_id: int, eos_id: int, pad_id: int) -> dict:
    theta = float(cfg.rope_theta)
    return {
        "architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model, "intermediate_size": cfg.d_ffn, "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_kv_heads,
        "max_position_embeddings": cfg.max_seq_len, "original_max_position_embeddings": cfg.max_seq_len,
        # transformers 5.x reads rope_parameters (and drops the rest on re-save); 4.x reads rope_theta/rope_scaling.
        "rope_parameters": {"rope_type": "default", "rope_theta": theta, "partial_rotary_factor": 1.0},
        "rope_theta": theta, "rope_scaling": None, "partial_rotary_factor": 1.0,
        "rms_norm_eps": cfg.rms_eps, "initializer_range": cfg.init_std, "hidden_act": "silu",
        "attention_bias": False, "attention_dropout": 0.0, "resid_pdrop": 0.0, "embd_pdrop": 0.0,
        "sliding_window": None, "tie_word_embeddings": False, "use_cache": True,
        "bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": pad_id, "dtype": "float32",
    }


def _number(d: dict, key: str, source: str, default=None, integer: bool = True):
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int if integer else (int, float)) or not v > 0:
        raise PhiforgeError(f"{source}: '{key}' must be a positive {'integer' if integer else 'number'}, got {v!r}")
    return v if integer else float(v)


def config_from_hf_dict(d: dict, source: str = "config.json") -> ModelConfig:
    """ModelConfig from a Phi3Config dict (phiforge's export, or transformers 4.x/5.x save_pretrained)."""
    if not isinstance(d, dict) or d.get("model_type") != "phi3":
        got = d.get("model_type") if isinstance(d, dict) else type(d).__name__
        raise PhiforgeError(f"{source}: expected a Phi3 config object with model_type 'phi3', got {got!r}")
    rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
    if not isinstance(rope, dict):
        raise PhiforgeError(f"{source}: 'rope_parameters' must be an object, got {rope!r}")
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    unsupported = [
        (rope_type != "default", f"rope type {rope_type!r} (only plain RoPE)"),
        (rope.get("partial_rotary_factor", d.get("partial_rotary_factor")) not in (None, 1, 1.0),
         "partial_rotary_factor other than 1.0"),
        (d.get("hidden_act", "silu") != "silu", f"hidden_act {d.get('hidden_act')!r} (only 'silu')"),
        (d.get("sliding_window") is not None, "sliding_window (must be null)"),
    ]
    for bad, what in unsupported:
        if bad:
            raise PhiforgeError(f"{source}: unsupported {what}")
    n_heads = _number(d, "num_attention_heads", source)
    kv = d.get("num_key_value_heads")
    cfg = ModelConfig(
        vocab_size=_number(d, "vocab_size", source), d_model=_number(d, "hidden_size", source),
        n_layers=_number(d, "num_hidden_layers", source), d_ffn=_number(d, "intermediate_size", source),
        n_heads=n_heads, n_kv_heads=n_heads if kv is None else _number(d, "num_key_value_heads", source),
        max_seq_len=_number(d, "max_position_embeddings", source, 4096),
        rope_theta=_number(rope, "rope_theta", source, d.get("rope_theta", 10000.0), integer=False),
        rms_eps=_number(d, "rms_norm_eps", source, 1e-5, integer=False),
        init_std=_number(d, "initializer_range", source, 0.02, integer=False),
    )
    if cfg.d_model % cfg.n_heads or cfg.n_heads % cfg.n_kv_heads or d.get("head_dim") not in (None, cfg.head_dim):
        raise PhiforgeError(f"{source}: hidden_size {cfg.d_model}, num_attention_heads {cfg.n_heads}, "
                            f"num_key_value_heads {cfg.n_kv_heads} and head_dim {d.get('head_dim')} are inconsistent")
    return cfg


def save_pretrained(model: nn.Module | None, cfg: ModelConfig, directory, *, bos_id: int, eos_id: int, pad_id: int,
                    state_dict: dict | None = None) -> None:
    """Write config.json, model.safetensors and generation_config.json, loadable by transformers or load_pretrained.

    `state_dict` replaces `model` when the weights come gathered from a sharded (FSDP) model.
    """
    from safetensors.torch import save_file

    (directory := Path(directory)).mkdir(parents=True, exist_ok=True)
    if state_dict is None:
        for attr in ("_orig_mod", "module"):  # torch.compile / DDP wrappers prefix the parameter names
            model = getattr(model, attr, model)
        state_dict = model.state_dict()
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state_dict.items()}
    gen_cfg = {"bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": pad_id}
    with atomic_path(directory / "model.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    atomic_write_json(directory / "generation_config.json", gen_cfg)
    # config.json last, so a folder with a config is a folder whose weights were fully written.
    atomic_write_json(directory / "config.json", hf_config_dict(cfg, bos_id, eos_id, pad_id))


def _one_line(e: Exception) -> str:
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"


def load_pretrained(directory) -> tuple[Phi3, ModelConfig]:
    """Load a phiforge export or a transformers-saved Phi3 folder; every failure is a one-line PhiforgeError."""
    from safetensors.torch import load_file

    directory = Path(directory)
    cfg_path, weights_path = directory / "config.json", directory / "model.safetensors"
    if not directory.is_dir():
        raise PhiforgeError(f"{directory}: model directory not found")
    for path in (cfg_path, weights_path):
        if not path.is_file():
            sharded = (directory / "model.safetensors.index.json").is_file() and path == weights_path
            raise PhiforgeError(f"{path}: {'sharded checkpoints are not supported' if sharded else 'file not found'}")
    try:
        raw = json.loads(cfg_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise PhiforgeError(f"{cfg_path}: cannot parse ({_one_line(e)})") from None
    cfg = config_from_hf_dict(raw, source=str(cfg_path))
    try:
        tensors = load_file(str(weights_path), device="cpu")
    except Exception as e:  # safetensors raises its own error type, OSError or ValueError depending on the damage
        raise PhiforgeError(f"{weights_path}: unreadable safetensors file ({_one_line(e)})") from None
    if "lm_head.weight" not in tensors and raw.get("tie_word_embeddings") and "model.embed_tokens.weight" in tensors:
        tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
    model = Phi3(cfg)
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        parts = [f"{kind} {len(names)} tensor(s) e.g. {', '.join(names[:3])}"
                 for kind, names in (("missing", missing), ("unexpected", unexpected)) if names]
        raise PhiforgeError(f"{weights_path}: does not match config.json: {'; '.join(parts)}")
    for name, ref in expected.items():
        t = tensors[name]
        if tuple(t.shape) != tuple(ref.shape) or not t.is_floating_point():
            raise PhiforgeError(f"{weights_path}: tensor {name} is {t.dtype} {tuple(t.shape)}, "
                                f"config.json implies a float tensor of shape {tuple(ref.shape)}")
        tensors[name] = t.to(torch.float32)
    model.load_state_dict(tensors, strict=True)
    return model, cfg
