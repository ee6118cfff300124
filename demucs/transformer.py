"""Cross-domain transformer used at the bottleneck of Hybrid Transformer Demucs.

The spectral branch ``x`` (``(B, C, Fr, T1)``) and the temporal branch ``xt``
(``(B, C, T2)``) are flattened into token sequences and processed by interleaved
self-attention layers (each branch on its own) and cross-attention layers (each branch
attends to the other one).

Checkpoint compatibility
    Module names, parameter names and shapes match upstream demucs 4.0.1, so upstream
    state dicts load with ``strict=True``.

Export safety
    ``nn.MultiheadAttention.forward`` has a "fast path" (``torch._native_multi_head_attention``)
    that it silently takes in eval mode under ``torch.no_grad()`` for self-attention.
    Neither the TorchScript nor the dynamo ONNX exporter handles that fused kernel well.
    We therefore keep ``nn.MultiheadAttention`` modules only as parameter containers and
    never call their ``forward``: :func:`multihead_attention` calls
    ``F.multi_head_attention_forward`` directly (which computes attention with
    ``F.scaled_dot_product_attention``). The same code path runs in training, in eval and
    during export, so exported graphs compute exactly what eval mode computes.
    Positional embeddings are built from shapes with ``torch.arange`` (no Python loops over
    tensor values, no in-place slice assignment).

Not supported
    Sparse attention (upstream's optional xformers kernels): asking for it raises
    ``NotImplementedError`` at construction time. The related constructor arguments are
    still accepted so that configurations saved with sparse attention disabled load.
"""

from __future__ import annotations

import contextlib
import math
import random
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .utils import is_exporting

Activation = Union[str, Callable[[torch.Tensor], torch.Tensor]]

__all__ = [
    "LayerScale",
    "MyGroupNorm",
    "ScaledEmbedding",
    "MyTransformerEncoderLayer",
    "CrossTransformerEncoderLayer",
    "CrossTransformerEncoder",
    "create_sin_embedding",
    "create_2d_sin_embedding",
    "create_sin_embedding_cape",
    "multihead_attention",
]


# --------------------------------------------------------------------------------------
# Positional embeddings
# --------------------------------------------------------------------------------------


def _check_even(dim: int) -> None:
    if dim % 2 != 0:
        raise ValueError(f"sinusoidal embeddings need an even dimension, got dim={dim}")


def _sin_cos_from_positions(
    pos: torch.Tensor, dim: int, max_period: float, device: Union[str, torch.device]
) -> torch.Tensor:
    """Cos/sin features of positions.

    Args:
        pos: positions, shape ``(T, B, 1)`` (any real or integer dtype).
        dim: number of output channels ``C`` (even). Channel ``i < C/2`` holds
            ``cos(pos / max_period ** (i / (C/2 - 1)))``, channel ``C/2 + i`` the sine.

    Returns:
        Tensor ``(T, B, C)``.
    """
    half_dim = dim // 2
    freq_index = torch.arange(half_dim, device=device).view(1, 1, -1)
    phase = pos / (max_period ** (freq_index / (half_dim - 1)))
    return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1)


def create_sin_embedding(
    length: int,
    dim: int,
    shift: int = 0,
    device: Union[str, torch.device] = "cpu",
    max_period: float = 10000,
) -> torch.Tensor:
    """1D sinusoidal positional embedding in time-first layout.

    Args:
        length: number of positions ``T``.
        dim: embedding dimension ``C`` (even).
        shift: offset added to every position.
        max_period: longest period of the sinusoids.

    Returns:
        Tensor ``(T, 1, C)``: cosines in the first half of the channels, sines in the
        second half.
    """
    _check_even(dim)
    pos = shift + torch.arange(length, device=device).view(-1, 1, 1)
    return _sin_cos_from_positions(pos, dim, max_period, device)


def create_2d_sin_embedding(
    d_model: int,
    height: int,
    width: int,
    device: Union[str, torch.device] = "cpu",
    max_period: float = 10000,
) -> torch.Tensor:
    """2D sinusoidal positional embedding (frequency x time).

    The first ``d_model / 2`` channels encode the column (width / time) index, the last
    ``d_model / 2`` the row (height / frequency) index; within each half, even channels
    hold sines and odd channels cosines of the same frequency.

    Args:
        d_model: number of channels ``C`` (multiple of 4).
        height: number of rows ``Fr``.
        width: number of columns ``T``.

    Returns:
        Tensor ``(1, C, Fr, T)`` (float32).
    """
    if d_model % 4 != 0:
        raise ValueError(
            f"2D sin/cos positional encoding needs a dimension divisible by 4, got {d_model}"
        )
    half = d_model // 2
    div_term = torch.exp(
        torch.arange(0.0, half, 2, device=device) * -(math.log(max_period) / half)
    )  # (C/4,)

    def interleaved(length: int) -> torch.Tensor:
        """(C/2, length): rows [sin f0, cos f0, sin f1, cos f1, ...]."""
        # Integer arange + cast: a float arange with a symbolic end is mistyped (int64) by
        # the dynamo ONNX exporter.
        pos = torch.arange(length, device=device).to(torch.float32).unsqueeze(1)  # (length, 1)
        angles = pos * div_term  # (length, C/4)
        feats = torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1)
        return feats.reshape(length, half).transpose(0, 1)

    along_width = interleaved(width)[:, None, :].expand(half, height, width)
    along_height = interleaved(height)[:, :, None].expand(half, height, width)
    return torch.cat([along_width, along_height], dim=0)[None]


def create_sin_embedding_cape(
    length: int,
    dim: int,
    batch_size: int,
    mean_normalize: bool,
    augment: bool,
    max_global_shift: float = 0.0,
    max_local_shift: float = 0.0,
    max_scale: float = 1.0,
    device: Union[str, torch.device] = "cpu",
    max_period: float = 10000.0,
) -> torch.Tensor:
    """Continuous augmented positional embedding (CAPE, Likhomanenko et al. 2021).

    Args:
        length: number of positions ``T``.
        dim: embedding dimension ``C`` (even).
        batch_size: ``B``; positions are augmented independently per batch item.
        mean_normalize: center positions around 0.
        augment: apply random global shift, local jitter and global scaling (training).
        max_global_shift: global shifts are drawn in ``[-max_global_shift, +...]``.
        max_local_shift: per-position jitter is drawn in ``[-max_local_shift, +...]``.
        max_scale: scales are ``exp(u)`` with ``u`` in ``[-log(max_scale), +...]``.

    Returns:
        Tensor ``(T, B, C)`` (float32).
    """
    _check_even(dim)
    pos = torch.arange(length, device=device).to(torch.float32).view(-1, 1, 1)
    pos = pos.expand(length, batch_size, 1)
    if mean_normalize:
        pos = pos - pos.mean(dim=0, keepdim=True)
    if augment:
        pos = _cape_augment(pos, max_global_shift, max_local_shift, max_scale)
    return _sin_cos_from_positions(pos, dim, max_period, device).float()


def _uniform(shape: Sequence[int], bound: float, like: torch.Tensor) -> torch.Tensor:
    """Samples uniformly in ``[-bound, bound]``."""
    noise = torch.rand(*shape, device=like.device, dtype=like.dtype)
    return (2 * noise - 1) * bound


def _cape_augment(
    pos: torch.Tensor, max_global_shift: float, max_local_shift: float, max_scale: float
) -> torch.Tensor:
    """Random CAPE augmentation of positions ``pos`` ``(T, B, 1)``."""
    length, batch_size = pos.shape[0], pos.shape[1]
    delta = _uniform((1, batch_size, 1), max_global_shift, pos)
    delta_local = _uniform((length, batch_size, 1), max_local_shift, pos)
    log_lambdas = _uniform((1, batch_size, 1), math.log(max_scale), pos)
    return (pos + delta + delta_local) * torch.exp(log_lambdas)


class ScaledEmbedding(nn.Module):
    """``nn.Embedding`` whose output is multiplied by ``boost`` (faster effective lr).

    The stored weights are initialised as ``N(0, 1) * scale / boost`` so that the
    effective initial embedding has standard deviation ``scale``.
    """

    def __init__(
        self, num_embeddings: int, embedding_dim: int, scale: float = 1.0, boost: float = 3.0
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_embeddings, embedding_dim)
        with torch.no_grad():
            self.embedding.weight.mul_(scale / boost)
        self.boost = boost

    @property
    def weight(self) -> torch.Tensor:
        """Effective embedding table ``(num_embeddings, embedding_dim)``."""
        return self.embedding.weight * self.boost

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: integer indices of any shape ``S``; returns ``(*S, embedding_dim)``."""
        return self.embedding(x) * self.boost


# --------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------


class LayerScale(nn.Module):
    """Per-channel learnt rescaling of a residual branch (Touvron et al. 2021, CaiT).

    The scale starts small (``init``) so that each residual block is close to the
    identity at initialisation.

    Args:
        channels: number of channels ``C``.
        init: initial value of every scale coefficient.
        channel_last: if False the input is ``(B, C, T)``; if True the channels are the
            last dimension, e.g. ``(T, B, C)`` or ``(B, T, C)``.
    """

    def __init__(self, channels: int, init: float = 0, channel_last: bool = False) -> None:
        super().__init__()
        self.channel_last = channel_last
        self.scale = nn.Parameter(torch.full((channels,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, C, T)`` (or ``(..., C)`` if ``channel_last``); same shape out."""
        if self.channel_last:
            return self.scale * x
        return self.scale[:, None] * x

    def add_to(self, residual: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``residual + self(x)`` in one pass over memory (``addcmul``)."""
        scale = self.scale if self.channel_last else self.scale[:, None]
        return torch.addcmul(residual, scale, x)


class MyGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` for channel-last sequences.

    Input and output are ``(B, T, C)``. With ``num_groups=1`` each batch item is
    normalised over all of ``T`` and ``C`` together.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


def multihead_attention(
    attn: nn.MultiheadAttention,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: Optional[torch.Tensor] = None,
    key_padding_mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Batch-first multi-head attention with the parameters of ``attn``, export-safe.

    Unlike ``attn(query, key, value)``, this never takes the fused
    ``torch._native_multi_head_attention`` fast path (which ``nn.MultiheadAttention``
    picks in eval/no-grad mode and which ONNX exporters do not handle well): it always
    calls ``F.multi_head_attention_forward`` without returning attention weights, i.e.
    ``F.scaled_dot_product_attention`` underneath. Dropout is applied only when
    ``attn.training``.

    Args:
        attn: the ``nn.MultiheadAttention`` holding the weights. Its ``batch_first``
            flag is ignored: inputs and output here are always batch-first.
        query: ``(B, T, C)``.
        key: ``(B, S, C)``.
        value: ``(B, S, C)``.
        attn_mask: optional ``(T, S)`` or ``(B * heads, T, S)`` mask.
        key_padding_mask: optional ``(B, S)`` mask.

    Returns:
        Tensor ``(B, T, C)``.

    Inside :func:`chunked_attention_for_export` (used by :mod:`demucs.export_onnx`,
    whose graphs have a fixed length), plain attention is written out by
    :func:`_query_chunked_attention` instead, so the exported graph never holds the
    whole ``(B, heads, T, S)`` score matrix (231 MB per layer for htdemucs). Inside
    :func:`fused_attention_for_export` (TorchScript exporter), it becomes one ONNX
    Runtime ``com.microsoft.MultiHeadAttention`` node between the projections.
    """
    plain = (
        attn_mask is None
        and key_padding_mask is None
        and attn.bias_k is None
        and not attn.add_zero_attn
        and attn._qkv_same_embed_dim
    )
    if plain and not attn.training and (_EXPORT_FUSED or _EXPORT_QUERY_CHUNK) and is_exporting():
        if _EXPORT_FUSED:
            return _fused_attention(attn, query, key, value)
        return _query_chunked_attention(attn, query, key, value, _EXPORT_QUERY_CHUNK)
    separate = not attn._qkv_same_embed_dim
    out, _ = F.multi_head_attention_forward(
        query.transpose(0, 1),
        key.transpose(0, 1),
        value.transpose(0, 1),
        attn.embed_dim,
        attn.num_heads,
        attn.in_proj_weight,
        attn.in_proj_bias,
        attn.bias_k,
        attn.bias_v,
        attn.add_zero_attn,
        attn.dropout,
        attn.out_proj.weight,
        attn.out_proj.bias,
        training=attn.training,
        key_padding_mask=key_padding_mask,
        need_weights=False,
        attn_mask=attn_mask,
        use_separate_proj_weight=separate,
        q_proj_weight=attn.q_proj_weight if separate else None,
        k_proj_weight=attn.k_proj_weight if separate else None,
        v_proj_weight=attn.v_proj_weight if separate else None,
    )
    return out.transpose(0, 1)


#: Queries per block of exported attention, 0 for off (see chunked_attention_for_export).
_EXPORT_QUERY_CHUNK = 0


@contextlib.contextmanager
def chunked_attention_for_export(chunk: int = 512) -> Iterator[None]:
    """While exporting in this context, attention is computed ``chunk`` queries at a
    time: ``(B, heads, chunk, S)`` scores live at once instead of ``(B, heads, T, S)``.

    Only for graphs with a fixed sequence length: the blocks are laid out for the
    length seen while tracing.
    """
    global _EXPORT_QUERY_CHUNK
    previous, _EXPORT_QUERY_CHUNK = _EXPORT_QUERY_CHUNK, int(chunk)
    try:
        yield
    finally:
        _EXPORT_QUERY_CHUNK = previous


#: True inside fused_attention_for_export.
_EXPORT_FUSED = False

#: Operator (domain ``com.microsoft``) that fused exported attention becomes.
ORT_ATTENTION_OP = "com.microsoft::MultiHeadAttention"


@contextlib.contextmanager
def fused_attention_for_export() -> Iterator[None]:
    """While exporting with the TorchScript exporter in this context, plain attention
    (eval, no mask) is one ``com.microsoft.MultiHeadAttention`` node: ONNX Runtime's
    fused kernel (CPU and CUDA providers), not available in every runtime (mobile
    reduced builds, onnxruntime-web): use :func:`chunked_attention_for_export` for those.
    """
    global _EXPORT_FUSED
    previous, _EXPORT_FUSED = _EXPORT_FUSED, True
    try:
        yield
    finally:
        _EXPORT_FUSED = previous


class _HeadsAttention(torch.autograd.Function):
    """Scaled dot-product attention on projected ``(B, L, C)`` tensors, ``heads`` heads;
    exported by the TorchScript exporter as one ONNX Runtime contrib node."""

    @staticmethod
    def forward(
        ctx: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, heads: int
    ) -> torch.Tensor:
        batch, length, dim = query.shape

        def split(x: torch.Tensor) -> torch.Tensor:  # (B, L, C) -> (B, heads, L, D)
            return x.reshape(batch, x.shape[1], heads, dim // heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(query), split(key), split(value))
        return out.transpose(1, 2).reshape(batch, length, dim)

    @staticmethod
    def symbolic(graph: Any, query: Any, key: Any, value: Any, heads: int) -> Any:
        out = graph.op(ORT_ATTENTION_OP, query, key, value, num_heads_i=heads)
        out.setType(query.type())
        return out


def _fused_attention(
    attn: nn.MultiheadAttention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
) -> torch.Tensor:
    """Multi-head attention (eval, no mask): projections, then :class:`_HeadsAttention`."""
    w_q, w_k, w_v = attn.in_proj_weight.chunk(3)
    b_q, b_k, b_v = (
        attn.in_proj_bias.chunk(3) if attn.in_proj_bias is not None else (None, None, None)
    )
    out = _HeadsAttention.apply(
        F.linear(query, w_q, b_q),
        F.linear(key, w_k, b_k),
        F.linear(value, w_v, b_v),
        attn.num_heads,
    )
    return F.linear(out, attn.out_proj.weight, attn.out_proj.bias)


def _query_chunked_attention(
    attn: nn.MultiheadAttention,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    chunk: int,
) -> torch.Tensor:
    """Multi-head attention (eval, no mask) computed ``chunk`` queries at a time.

    Same result as ``F.multi_head_attention_forward`` up to float rounding. Shapes:
    query ``(B, T, C)``, key/value ``(B, S, C)`` -> ``(B, T, C)``; static ``T`` (the
    exported segment is fixed).
    """
    batch, length, dim = query.shape
    heads = attn.num_heads
    head_dim = dim // heads
    w_q, w_k, w_v = attn.in_proj_weight.chunk(3)
    b_q, b_k, b_v = (
        attn.in_proj_bias.chunk(3) if attn.in_proj_bias is not None else (None, None, None)
    )

    def split_heads(x: torch.Tensor) -> torch.Tensor:  # (B, L, C) -> (B, heads, L, D)
        return x.reshape(batch, -1, heads, head_dim).transpose(1, 2)

    q = split_heads(F.linear(query, w_q, b_q)) * (head_dim**-0.5)
    k_t = split_heads(F.linear(key, w_k, b_k)).transpose(2, 3)
    v = split_heads(F.linear(value, w_v, b_v))
    blocks = [
        torch.matmul(torch.matmul(q[:, :, start : start + chunk], k_t).softmax(-1), v)
        for start in range(0, int(length), chunk)
    ]
    out = torch.cat(blocks, dim=2).transpose(1, 2).reshape(batch, length, dim)
    return F.linear(out, attn.out_proj.weight, attn.out_proj.bias)


def _resolve_activation(activation: Activation) -> Callable[[torch.Tensor], torch.Tensor]:
    if callable(activation):
        return activation
    if activation == "relu":
        return F.relu
    if activation == "gelu":
        return F.gelu
    raise ValueError(f"activation should be 'relu', 'gelu' or a callable, got {activation!r}")


def _reject_sparse(sparse: bool) -> None:
    if sparse:
        raise NotImplementedError(
            "sparse attention (xformers kernels of upstream Demucs) is not supported by this "
            "implementation; use sparse_self_attn=False and sparse_cross_attn=False"
        )


def _has_norm_out(norm_first: bool, norm_out: Union[bool, int]) -> bool:
    """Whether a layer gets a final ``norm_out`` GroupNorm.

    Mirrors upstream's ``norm_first & norm_out`` (a bitwise and), so that e.g.
    ``norm_out=2`` yields no extra norm, exactly like upstream checkpoints expect.
    """
    return bool(int(norm_first) & int(norm_out))


def _norm(
    group_norm: Union[bool, int], d_model: int, eps: float, factory_kwargs: Dict[str, Any]
) -> Any:
    """LayerNorm over channels, or a channel-last GroupNorm if ``group_norm`` (groups)."""
    if group_norm:
        return MyGroupNorm(int(group_norm), d_model, eps=eps, **factory_kwargs)
    return nn.LayerNorm(d_model, eps=eps, **factory_kwargs)


def _layer_scale(d_model: int, enabled: bool, init_values: float) -> nn.Module:
    return LayerScale(d_model, init_values, True) if enabled else nn.Identity()


class MyTransformerEncoderLayer(nn.TransformerEncoderLayer):
    """Self-attention transformer layer with optional GroupNorm, LayerScale and norm_out.

    Built on ``nn.TransformerEncoderLayer`` (same parameter names: ``self_attn``,
    ``linear1``, ``linear2``, ``norm1``, ``norm2``) plus ``gamma_1``/``gamma_2``
    (LayerScale) and ``norm_out``. Only ``batch_first=True`` is used by
    :class:`CrossTransformerEncoder`; ``batch_first=False`` is also accepted.

    The sparse-attention arguments (``mask_type`` ... ``sparsity``) exist for
    compatibility with upstream configurations; ``sparse=True`` raises.
    """

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: Activation = F.relu,
        group_norm: Union[bool, int] = 0,
        norm_first: bool = False,
        norm_out: Union[bool, int] = False,
        layer_norm_eps: float = 1e-5,
        layer_scale: bool = False,
        init_values: float = 1e-4,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
        sparse: bool = False,
        mask_type: str = "diag",
        mask_random_seed: int = 42,
        sparse_attn_window: int = 500,
        global_window: int = 50,
        auto_sparsity: bool = False,
        sparsity: float = 0.95,
        batch_first: bool = False,
    ) -> None:
        _reject_sparse(sparse)
        if d_model % nhead != 0:
            raise ValueError(f"d_model={d_model} must be divisible by nhead={nhead}")
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__(
            d_model=d_model,
            nhead=nhead,
            dim_feedforward=dim_feedforward,
            dropout=dropout,
            activation=_resolve_activation(activation),
            layer_norm_eps=layer_norm_eps,
            batch_first=batch_first,
            norm_first=norm_first,
            device=device,
            dtype=dtype,
        )
        self.sparse = sparse
        self.auto_sparsity = auto_sparsity
        if group_norm:
            self.norm1 = _norm(group_norm, d_model, layer_norm_eps, factory_kwargs)
            self.norm2 = _norm(group_norm, d_model, layer_norm_eps, factory_kwargs)
        self.norm_out: Optional[nn.Module] = None
        if _has_norm_out(norm_first, norm_out):
            self.norm_out = MyGroupNorm(num_groups=int(norm_out), num_channels=d_model)
        self.gamma_1 = _layer_scale(d_model, layer_scale, init_values)
        self.gamma_2 = _layer_scale(d_model, layer_scale, init_values)

    def _sa_block(  # type: ignore[override]
        self,
        x: torch.Tensor,
        attn_mask: Optional[torch.Tensor],
        key_padding_mask: Optional[torch.Tensor],
        is_causal: bool = False,
    ) -> torch.Tensor:
        if is_causal:
            raise ValueError("is_causal is not supported, pass an explicit src_mask")
        if self.self_attn.batch_first:
            out = multihead_attention(self.self_attn, x, x, x, attn_mask, key_padding_mask)
        else:
            xb = x.transpose(0, 1)
            out = multihead_attention(
                self.self_attn, xb, xb, xb, attn_mask, key_padding_mask
            ).transpose(0, 1)
        return self.dropout1(out)

    def forward(  # type: ignore[override]
        self,
        src: torch.Tensor,
        src_mask: Optional[torch.Tensor] = None,
        src_key_padding_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """``src``: ``(B, T, C)`` if ``batch_first`` else ``(T, B, C)``; same shape out."""
        x = src
        if self.norm_first:
            x = x + self.gamma_1(self._sa_block(self.norm1(x), src_mask, src_key_padding_mask))
            x = x + self.gamma_2(self._ff_block(self.norm2(x)))
            if self.norm_out is not None:
                x = self.norm_out(x)
        else:
            x = self.norm1(x + self.gamma_1(self._sa_block(x, src_mask, src_key_padding_mask)))
            x = self.norm2(x + self.gamma_2(self._ff_block(x)))
        return x


class CrossTransformerEncoderLayer(nn.Module):
    """Cross-attention transformer layer: queries from one sequence, keys/values from another.

    Parameters: ``cross_attn`` (``nn.MultiheadAttention``), ``linear1``, ``linear2``,
    ``norm1``, ``norm2``, ``norm3``, optional ``norm_out`` and ``gamma_1``/``gamma_2``.

    With ``norm_first`` (pre-norm)::

        x = q + gamma_1(attn(norm1(q), norm2(k)))
        x = x + gamma_2(ff(norm3(x)));  x = norm_out(x)   (if norm_out)

    otherwise (post-norm; ``norm3`` exists but is unused, as upstream)::

        x = norm1(q + gamma_1(attn(q, k)))
        x = norm2(x + gamma_2(ff(x)))

    The sparse-attention arguments exist for compatibility with upstream configurations;
    ``sparse=True`` raises.
    """

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation: Activation = F.relu,
        layer_norm_eps: float = 1e-5,
        layer_scale: bool = False,
        init_values: float = 1e-4,
        norm_first: bool = False,
        group_norm: Union[bool, int] = False,
        norm_out: Union[bool, int] = False,
        sparse: bool = False,
        mask_type: str = "diag",
        mask_random_seed: int = 42,
        sparse_attn_window: int = 500,
        global_window: int = 50,
        sparsity: float = 0.95,
        auto_sparsity: Optional[bool] = None,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
        batch_first: bool = False,
    ) -> None:
        super().__init__()
        _reject_sparse(sparse)
        if d_model % nhead != 0:
            raise ValueError(f"d_model={d_model} must be divisible by nhead={nhead}")
        factory_kwargs: Dict[str, Any] = {"device": device, "dtype": dtype}
        self.sparse = sparse
        self.auto_sparsity = auto_sparsity
        self.batch_first = batch_first
        self.norm_first = norm_first

        self.cross_attn = nn.MultiheadAttention(
            d_model, nhead, dropout=dropout, batch_first=batch_first
        )
        self.linear1 = nn.Linear(d_model, dim_feedforward, **factory_kwargs)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model, **factory_kwargs)

        self.norm1 = _norm(group_norm, d_model, layer_norm_eps, factory_kwargs)
        self.norm2 = _norm(group_norm, d_model, layer_norm_eps, factory_kwargs)
        self.norm3 = _norm(group_norm, d_model, layer_norm_eps, factory_kwargs)
        self.norm_out: Optional[nn.Module] = None
        if _has_norm_out(norm_first, norm_out):
            self.norm_out = MyGroupNorm(num_groups=int(norm_out), num_channels=d_model)

        self.gamma_1 = _layer_scale(d_model, layer_scale, init_values)
        self.gamma_2 = _layer_scale(d_model, layer_scale, init_values)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.activation = _resolve_activation(activation)

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """
        Args:
            q: queries, ``(B, T, C)`` if ``batch_first`` else ``(T, B, C)``.
            k: keys and values, ``(B, S, C)`` if ``batch_first`` else ``(S, B, C)``.
            mask: optional attention mask ``(T, S)``.

        Returns:
            Tensor shaped like ``q``.
        """
        if self.norm_first:
            x = q + self.gamma_1(self._ca_block(self.norm1(q), self.norm2(k), mask))
            x = x + self.gamma_2(self._ff_block(self.norm3(x)))
            if self.norm_out is not None:
                x = self.norm_out(x)
        else:
            x = self.norm1(q + self.gamma_1(self._ca_block(q, k, mask)))
            x = self.norm2(x + self.gamma_2(self._ff_block(x)))
        return x

    def _ca_block(
        self, q: torch.Tensor, k: torch.Tensor, attn_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """Cross-attention of ``q`` on ``k`` (keys = values), then dropout."""
        if self.batch_first:
            out = multihead_attention(self.cross_attn, q, k, k, attn_mask)
        else:
            qb, kb = q.transpose(0, 1), k.transpose(0, 1)
            out = multihead_attention(self.cross_attn, qb, kb, kb, attn_mask).transpose(0, 1)
        return self.dropout1(out)

    def _ff_block(self, x: torch.Tensor) -> torch.Tensor:
        """Position-wise feed-forward network, then dropout."""
        x = self.linear2(self.dropout(self.activation(self.linear1(x))))
        return self.dropout2(x)


# --------------------------------------------------------------------------------------
# Full cross-domain encoder
# --------------------------------------------------------------------------------------

_EMBEDDINGS = ("sin", "cape", "scaled")


class CrossTransformerEncoder(nn.Module):
    """Interleaved self/cross-attention transformer over a spectrogram and a waveform branch.

    Layer ``idx`` is a self-attention layer (:class:`MyTransformerEncoderLayer`) on each
    branch when ``idx % 2 == classic_parity`` (``classic_parity = 1 if cross_first else
    0``); otherwise it is a cross-attention layer (:class:`CrossTransformerEncoderLayer`)
    where each branch attends to the other one's output from the previous layer.
    ``layers`` holds the spectral-branch layers and ``layers_t`` the temporal ones.

    Args:
        dim: channels ``C`` of both branches (divisible by ``num_heads``; by 4 for the 2D
            embedding).
        emb: positional embedding of the temporal branch: ``"sin"``, ``"cape"`` or
            ``"scaled"`` (learnt, ``max_positions`` entries). The spectral branch always
            uses a fixed 2D sinusoidal embedding.
        hidden_scale: feed-forward width is ``int(dim * hidden_scale)``.
        num_heads: attention heads.
        num_layers: total number of layers (self and cross).
        cross_first: start with a cross-attention layer.
        dropout: dropout in attention and feed-forward blocks.
        max_positions: size of the ``"scaled"`` embedding table.
        norm_in: LayerNorm on both inputs before adding the positional embeddings.
        norm_in_group: if ``norm_in`` is False and this is non-zero, GroupNorm with that
            many groups instead.
        group_norm: if non-zero, GroupNorm (that many groups) instead of LayerNorm in
            the layers.
        norm_first: pre-norm layers.
        norm_out: with ``norm_first``, a final GroupNorm (``int(norm_out)`` groups) per
            layer (see upstream's ``norm_first & norm_out`` semantics).
        max_period: longest period of the sinusoidal embeddings.
        weight_decay: weight decay for :meth:`make_optim_group`.
        lr: optional learning rate for :meth:`make_optim_group`.
        layer_scale: LayerScale (init 1e-4) on the residual branches.
        gelu: GELU activation (else ReLU).
        sin_random_shift: the ``"sin"`` embedding positions are shifted by a random
            integer in ``[0, sin_random_shift]`` drawn from Python's ``random`` at every
            forward pass, as upstream does (in eval mode too). The draw happens even for
            the default 0, so the global random stream, from which ``apply_model`` draws
            its shifts, advances exactly as upstream's.
        weight_pos_embed: multiplier of the positional embeddings.
        cape_mean_normalize: CAPE: center positions.
        cape_augment: CAPE: random augmentation in training mode.
        cape_glob_loc_scale: CAPE: ``[max_global_shift, max_local_shift, max_scale]``.
        sparse_self_attn: must be False (sparse attention is not supported).
        sparse_cross_attn: must be False (sparse attention is not supported).
        mask_type, mask_random_seed, sparse_attn_window, global_window, auto_sparsity,
        sparsity: sparse-attention settings, accepted for compatibility and unused.
    """

    def __init__(
        self,
        dim: int,
        emb: str = "sin",
        hidden_scale: float = 4.0,
        num_heads: int = 8,
        num_layers: int = 6,
        cross_first: bool = False,
        dropout: float = 0.0,
        max_positions: int = 1000,
        norm_in: bool = True,
        norm_in_group: Union[bool, int] = False,
        group_norm: Union[bool, int] = False,
        norm_first: bool = False,
        norm_out: Union[bool, int] = False,
        max_period: float = 10000.0,
        weight_decay: float = 0.0,
        lr: Optional[float] = None,
        layer_scale: bool = False,
        gelu: bool = True,
        sin_random_shift: int = 0,
        weight_pos_embed: float = 1.0,
        cape_mean_normalize: bool = True,
        cape_augment: bool = True,
        cape_glob_loc_scale: Sequence[float] = (5000.0, 1.0, 1.4),
        sparse_self_attn: bool = False,
        sparse_cross_attn: bool = False,
        mask_type: str = "diag",
        mask_random_seed: int = 42,
        sparse_attn_window: int = 500,
        global_window: int = 50,
        auto_sparsity: bool = False,
        sparsity: float = 0.95,
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        if emb not in _EMBEDDINGS:
            raise ValueError(f"emb must be one of {_EMBEDDINGS}, got {emb!r}")
        if sin_random_shift < 0:
            raise ValueError(f"sin_random_shift must be >= 0, got {sin_random_shift}")
        _reject_sparse(sparse_self_attn)
        _reject_sparse(sparse_cross_attn)

        self.dim = dim
        self.num_layers = num_layers
        self.classic_parity = 1 if cross_first else 0
        self.emb = emb
        self.max_period = max_period
        self.weight_decay = weight_decay
        self.lr = lr
        self.weight_pos_embed = weight_pos_embed
        self.sin_random_shift = sin_random_shift
        self.cape_mean_normalize = cape_mean_normalize
        self.cape_augment = cape_augment
        self.cape_glob_loc_scale: List[float] = [float(v) for v in cape_glob_loc_scale]
        if emb == "scaled":
            self.position_embeddings = ScaledEmbedding(max_positions, dim, scale=0.2)

        self.norm_in: nn.Module
        self.norm_in_t: nn.Module
        if norm_in:
            self.norm_in = nn.LayerNorm(dim)
            self.norm_in_t = nn.LayerNorm(dim)
        elif norm_in_group:
            self.norm_in = MyGroupNorm(int(norm_in_group), dim)
            self.norm_in_t = MyGroupNorm(int(norm_in_group), dim)
        else:
            self.norm_in = nn.Identity()
            self.norm_in_t = nn.Identity()

        layer_kwargs: Dict[str, Any] = {
            "d_model": dim,
            "nhead": num_heads,
            "dim_feedforward": int(dim * hidden_scale),
            "dropout": dropout,
            "activation": F.gelu if gelu else F.relu,
            "group_norm": group_norm,
            "norm_first": norm_first,
            "norm_out": norm_out,
            "layer_scale": layer_scale,
            "mask_type": mask_type,
            "mask_random_seed": mask_random_seed,
            "sparse_attn_window": sparse_attn_window,
            "global_window": global_window,
            "sparsity": sparsity,
            "auto_sparsity": auto_sparsity,
            "batch_first": True,
        }
        self.layers = nn.ModuleList()  # spectral branch
        self.layers_t = nn.ModuleList()  # temporal branch
        for idx in range(num_layers):
            for layers in (self.layers, self.layers_t):
                layer: nn.Module
                if self._is_self_attention(idx):
                    layer = MyTransformerEncoderLayer(sparse=sparse_self_attn, **layer_kwargs)
                else:
                    layer = CrossTransformerEncoderLayer(sparse=sparse_cross_attn, **layer_kwargs)
                layers.append(layer)

    def _is_self_attention(self, idx: int) -> bool:
        return idx % 2 == self.classic_parity

    def forward(self, x: torch.Tensor, xt: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            x: spectral branch ``(B, C, Fr, T1)``.
            xt: temporal branch ``(B, C, T2)``.

        Returns:
            ``(x, xt)`` with the same shapes as the inputs.
        """
        B, _, Fr, T1 = x.shape
        T2 = xt.shape[2]
        # Channels come from the config: a Python int even while tracing (where sizes read
        # from tensors are traced values). Inputs with other channel counts fail to reshape.
        C = self.dim

        # (B, C, Fr, T1) -> (B, T1 * Fr, C): tokens ordered time-major.
        pos_emb_2d = create_2d_sin_embedding(C, Fr, T1, x.device, self.max_period)
        x = x.permute(0, 3, 2, 1).reshape(B, T1 * Fr, C)
        pos_emb_2d = pos_emb_2d.permute(0, 3, 2, 1).reshape(1, T1 * Fr, C)
        x = self.norm_in(x) + self.weight_pos_embed * pos_emb_2d.to(x.dtype)

        xt = xt.transpose(1, 2)  # (B, T2, C)
        pos_emb = self._get_pos_embedding(T2, B, C, xt.device).transpose(0, 1)
        xt = self.norm_in_t(xt) + self.weight_pos_embed * pos_emb.to(xt.dtype)

        for idx in range(self.num_layers):
            if self._is_self_attention(idx):
                x = self.layers[idx](x)
                xt = self.layers_t[idx](xt)
            else:
                x, xt = self.layers[idx](x, xt), self.layers_t[idx](xt, x)

        x = x.reshape(B, T1, Fr, C).permute(0, 3, 2, 1)
        xt = xt.transpose(1, 2)
        return x, xt

    def _get_pos_embedding(
        self, T: int, B: int, C: int, device: Union[str, torch.device]
    ) -> torch.Tensor:
        """Positional embedding of the temporal branch, ``(T, B, C)`` or ``(T, 1, C)``."""
        if self.emb == "sin":
            shift = random.randrange(self.sin_random_shift + 1)
            return create_sin_embedding(
                T, C, shift=shift, device=device, max_period=self.max_period
            )
        if self.emb == "cape":
            max_global_shift, max_local_shift, max_scale = self.cape_glob_loc_scale
            return create_sin_embedding_cape(
                T,
                C,
                B,
                mean_normalize=self.cape_mean_normalize,
                augment=self.cape_augment and self.training,
                max_global_shift=max_global_shift,
                max_local_shift=max_local_shift,
                max_scale=max_scale,
                device=device,
                max_period=self.max_period,
            )
        pos = torch.arange(T, device=device)
        return self.position_embeddings(pos)[:, None]

    def make_optim_group(self) -> Dict[str, Any]:
        """Optimizer parameter group with this module's weight decay and optional lr."""
        group: Dict[str, Any] = {
            "params": list(self.parameters()),
            "weight_decay": self.weight_decay,
        }
        if self.lr is not None:
            group["lr"] = self.lr
        return group
