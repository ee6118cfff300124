"""Hybrid (waveform + spectrogram) Demucs v3 and the encoder/decoder layers it shares
with HTDemucs.

The module layout (and thus every ``state_dict`` key) follows upstream Demucs 4.0.1,
so its checkpoints load unchanged. Spectrograms are computed by
:class:`~demucs.spec.SpectralMixin`, with either the ``torch.stft`` backend or the
exportable conv-STFT one (``model.use_conv_stft = True``); the rest of the model only
ever sees real ``(B, C, F, T)`` tensors.

Shapes: ``B`` batch, ``C`` channels, ``F`` frequency bins, ``T`` time steps (frames in
the frequency branch, samples in the time branch), ``S`` sources.
"""

from __future__ import annotations

import copy
import typing as tp

import torch
from torch import nn
from torch.nn import functional as F

from .demucs import DConv, rescale_module
from .spec import SpectralMixin, pad1d
from .states import capture_init

__all__ = [
    "pad1d",
    "ScaledEmbedding",
    "HEncLayer",
    "HDecLayer",
    "MultiWrap",
    "UNetSkips",
    "HybridUNetMixin",
    "HDemucs",
    "standardize",
]


class ScaledEmbedding(nn.Module):
    """Embedding whose stored weight is divided by ``scale`` and multiplied back on use.

    This is equivalent to a ``scale`` times larger learning rate for the embedding.
    With ``smooth``, the initial embedding is a normalized cumulative sum of Gaussian
    rows, so neighbouring indices (frequencies) start with similar vectors.

    Args:
        num_embeddings: number of indices.
        embedding_dim: dimension ``D`` of each vector.
        scale: the scale described above.
        smooth: use the smooth initialization.
    """

    def __init__(
        self, num_embeddings: int, embedding_dim: int, scale: float = 10.0, smooth: bool = False
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_embeddings, embedding_dim)
        with torch.no_grad():
            weight = self.embedding.weight
            if smooth:
                summed = torch.cumsum(weight, dim=0)
                # A sum of n unit Gaussians has std sqrt(n): normalize it back.
                counts = torch.arange(1, num_embeddings + 1).to(summed)
                weight.copy_(summed / counts.sqrt()[:, None])
            weight.div_(scale)
        self.scale = scale

    @property
    def weight(self) -> torch.Tensor:
        """The effective embedding matrix ``(num_embeddings, D)``."""
        return self.embedding.weight * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: integer indices ``(*)``; returns ``(*, D)``."""
        return self.embedding(x) * self.scale


def _norm_factory(norm: bool, groups: int) -> tp.Callable[[int], nn.Module]:
    """``GroupNorm(groups, dim)`` builder, or an ``Identity`` builder if not ``norm``."""
    if norm:
        return lambda dim: nn.GroupNorm(groups, dim)
    return lambda dim: nn.Identity()


def _dconv_per_band(dconv: nn.Module, y: torch.Tensor, freq: bool) -> torch.Tensor:
    """Runs a :class:`DConv` over time, separately for every frequency row if ``freq``.

    Args:
        y: ``(B, C, F, T)`` if ``freq`` else ``(B, C, T)``.
    Returns:
        same shape as ``y``.
    """
    if not freq:
        return dconv(y)
    batch, channels, freqs, frames = y.shape
    flat = y.permute(0, 2, 1, 3).reshape(batch * freqs, channels, frames)
    out = dconv(flat)
    return out.view(batch, freqs, channels, frames).permute(0, 2, 1, 3)


class HEncLayer(nn.Module):
    """Encoder layer of the frequency (``freq=True``) or time (``freq=False``) branch.

    Strided convolution (over frequencies for the frequency branch, whose time axis is
    untouched), GroupNorm and GELU, optional DConv residual branch, then optional
    rewrite conv (``1 + 2 * context`` kernel) followed by GroupNorm and GLU.

    Args:
        chin: input channels.
        chout: output channels.
        kernel_size: kernel of the strided conv.
        stride: its stride.
        norm_groups: GroupNorm groups.
        empty: keep only the strided conv (used by the time branch just before it is
            merged into the frequency branch).
        freq: act on the frequency axis of ``(B, C, F, T)`` inputs.
        dconv: add a :class:`DConv` residual branch.
        norm: use GroupNorm (else Identity).
        context: context of the rewrite conv.
        dconv_kw: keyword arguments of the :class:`DConv`.
        pad: pad by ``kernel_size // 4`` so the output is ``input / stride`` long
            (for the time branch, the input is also right-padded to a multiple of
            ``stride``).
        rewrite: add the rewrite conv.
    """

    def __init__(
        self,
        chin: int,
        chout: int,
        kernel_size: int = 8,
        stride: int = 4,
        norm_groups: int = 1,
        empty: bool = False,
        freq: bool = True,
        dconv: bool = True,
        norm: bool = True,
        context: int = 0,
        dconv_kw: tp.Optional[tp.Dict[str, tp.Any]] = None,
        pad: bool = True,
        rewrite: bool = True,
    ) -> None:
        super().__init__()
        norm_fn = _norm_factory(norm, norm_groups)
        padding = kernel_size // 4 if pad else 0
        self.freq = freq
        self.kernel_size = kernel_size
        self.stride = stride
        self.empty = empty
        self.norm = norm
        self.pad = padding
        if freq:
            self.conv: nn.Module = nn.Conv2d(
                chin, chout, (kernel_size, 1), (stride, 1), (padding, 0)
            )
        else:
            self.conv = nn.Conv1d(chin, chout, kernel_size, stride, padding)
        if empty:
            return
        self.norm1 = norm_fn(chout)
        self.rewrite: tp.Optional[nn.Module] = None
        if rewrite:
            klass = nn.Conv2d if freq else nn.Conv1d
            self.rewrite = klass(chout, 2 * chout, 1 + 2 * context, 1, context)
            self.norm2 = norm_fn(2 * chout)
        self.dconv: tp.Optional[DConv] = None
        if dconv:
            self.dconv = DConv(chout, **(dconv_kw or {}))

    def forward(self, x: torch.Tensor, inject: tp.Optional[torch.Tensor] = None) -> torch.Tensor:
        """Encodes one level.

        Args:
            x: ``(B, C, F, T)`` for the frequency branch; ``(B, C, T)`` for the time
                branch (a ``(B, C, F, T)`` input is flattened to ``(B, C * F, T)``).
            inject: time-branch output added after the strided conv, ``(B, C', T')``
                or ``(B, C', F', T')``, with the same last dimension as the conv output.

        Returns:
            ``(B, chout, F / stride, T)`` or ``(B, chout, ceil(T / stride))``.
        """
        if not self.freq:
            if x.dim() == 4:
                batch, channels, freqs, steps = x.shape
                x = x.reshape(batch, channels * freqs, steps)
            steps = x.shape[-1]
            x = F.pad(x, (0, (steps + self.stride - 1) // self.stride * self.stride - steps))
        y = self.conv(x)
        if self.empty:
            return y
        if inject is not None:
            if inject.dim() == 3 and y.dim() == 4:
                inject = inject[:, :, None]
            y = y + inject
        y = F.gelu(self.norm1(y))
        if self.dconv is not None:
            y = _dconv_per_band(self.dconv, y, self.freq)
        if self.rewrite is not None:
            y = F.glu(self.norm2(self.rewrite(y)), dim=1)
        return y


class HDecLayer(nn.Module):
    """Decoder layer, mirror of :class:`HEncLayer`.

    Adds the skip connection, optional rewrite conv + GroupNorm + GLU, optional DConv,
    then the strided transposed conv, GroupNorm and (unless ``last``) GELU.

    Args:
        chin: input channels.
        chout: output channels.
        last: this is the outermost layer: no final GELU.
        context_freq: the rewrite conv also has context over frequencies (else it is
            ``[1, 1 + 2 * context]``, over time only; needed by :class:`MultiWrap`).
        Others: as in :class:`HEncLayer`. An ``empty`` layer only has the transposed
            conv and its norm.
    """

    def __init__(
        self,
        chin: int,
        chout: int,
        last: bool = False,
        kernel_size: int = 8,
        stride: int = 4,
        norm_groups: int = 1,
        empty: bool = False,
        freq: bool = True,
        dconv: bool = True,
        norm: bool = True,
        context: int = 1,
        dconv_kw: tp.Optional[tp.Dict[str, tp.Any]] = None,
        pad: bool = True,
        context_freq: bool = True,
        rewrite: bool = True,
    ) -> None:
        super().__init__()
        norm_fn = _norm_factory(norm, norm_groups)
        self.pad = kernel_size // 4 if pad else 0
        self.last = last
        self.freq = freq
        self.chin = chin
        self.empty = empty
        self.stride = stride
        self.kernel_size = kernel_size
        self.norm = norm
        self.context_freq = context_freq
        if freq:
            self.conv_tr: nn.Module = nn.ConvTranspose2d(chin, chout, (kernel_size, 1), (stride, 1))
        else:
            self.conv_tr = nn.ConvTranspose1d(chin, chout, kernel_size, stride)
        self.norm2 = norm_fn(chout)
        if empty:
            return
        self.rewrite: tp.Optional[nn.Module] = None
        if rewrite:
            if not freq:
                self.rewrite = nn.Conv1d(chin, 2 * chin, 1 + 2 * context, 1, context)
            elif context_freq:
                self.rewrite = nn.Conv2d(chin, 2 * chin, 1 + 2 * context, 1, context)
            else:
                self.rewrite = nn.Conv2d(chin, 2 * chin, (1, 1 + 2 * context), 1, (0, context))
            self.norm1 = norm_fn(2 * chin)
        self.dconv: tp.Optional[DConv] = None
        if dconv:
            self.dconv = DConv(chin, **(dconv_kw or {}))

    def decode(
        self, x: torch.Tensor, skip: tp.Optional[torch.Tensor], length: tp.Optional[int]
    ) -> tp.Tuple[torch.Tensor, torch.Tensor]:
        """Like :meth:`forward` but without the final activation."""
        if self.freq and x.dim() == 3:
            batch, _, steps = x.shape
            x = x.view(batch, self.chin, -1, steps)
        if self.empty:
            if skip is not None:
                raise ValueError("an empty decoder layer takes no skip connection")
            y = x
        else:
            if skip is None:
                raise ValueError("a non-empty decoder layer needs its skip connection")
            y = x + skip
            if self.rewrite is not None:
                y = F.glu(self.norm1(self.rewrite(y)), dim=1)
            if self.dconv is not None:
                y = _dconv_per_band(self.dconv, y, self.freq)
        z = self.norm2(self.conv_tr(y))
        if self.freq:
            if self.pad:
                z = z[..., self.pad : z.shape[-2] - self.pad, :]
        else:
            if length is None:
                raise ValueError("a time decoder layer needs the output length")
            z = z[..., self.pad : self.pad + length]
        return z, y

    def forward(
        self, x: torch.Tensor, skip: tp.Optional[torch.Tensor], length: tp.Optional[int]
    ) -> tp.Tuple[torch.Tensor, torch.Tensor]:
        """Decodes one level.

        Args:
            x: ``(B, chin, F, T)`` (frequency branch; ``(B, chin * F, T)`` is reshaped)
                or ``(B, chin, T)`` (time branch).
            skip: encoder output of the same level (same shape as ``x``), or None for
                an ``empty`` layer.
            length: output length of a time layer (ignored by frequency layers).

        Returns:
            ``(out, pre)``: ``out`` is ``(B, chout, F * stride, T)`` or
            ``(B, chout, length)``; ``pre`` is the input of the transposed conv.
        """
        z, y = self.decode(x, skip, length)
        if not self.last:
            z = F.gelu(z)
        return z, y


class MultiWrap(nn.Module):
    """Replicates a frequency layer to give each frequency band its own weights.

    ``split_ratios`` gives the band edges as fractions of the frequency axis. The
    bands are cut so that, if all replicas had equal weights, the result would be
    exactly that of the original layer on the whole axis: encoder bands overlap by
    ``kernel_size - stride`` bins; decoder outputs overlapping by ``stride`` bins are
    summed (bias counted once).

    Args:
        layer: a frequency :class:`HEncLayer` or :class:`HDecLayer`, padded, without
            norm (and for a decoder, with ``context_freq=False``). It is deep-copied
            ``len(split_ratios) + 1`` times and each copy re-initialized.
        split_ratios: increasing ratios in ``(0, 1)``.
    """

    def __init__(
        self, layer: tp.Union[HEncLayer, HDecLayer], split_ratios: tp.Sequence[float]
    ) -> None:
        super().__init__()
        if not isinstance(layer, (HEncLayer, HDecLayer)):
            raise ValueError(f"MultiWrap wraps HEncLayer or HDecLayer, got {type(layer)}")
        if layer.norm or not layer.freq or not layer.pad:
            raise ValueError("MultiWrap needs a padded frequency layer without norm")
        if isinstance(layer, HDecLayer) and layer.context_freq:
            raise ValueError("MultiWrap needs a decoder layer with context_freq=False")
        self.split_ratios = split_ratios
        self.conv = isinstance(layer, HEncLayer)
        self.layers = nn.ModuleList()
        for _ in range(len(split_ratios) + 1):
            replica = copy.deepcopy(layer)
            if isinstance(replica, HEncLayer):
                setattr(replica.conv, "padding", (0, 0))  # padding is done on the band edges
            else:
                replica.pad = 0  # the band edges are trimmed here instead
            for module in replica.modules():
                reset = getattr(module, "reset_parameters", None)
                if callable(reset):
                    reset()
            self.layers.append(replica)

    def forward(
        self,
        x: torch.Tensor,
        skip: tp.Optional[torch.Tensor] = None,
        length: tp.Optional[int] = None,
    ) -> tp.Union[torch.Tensor, tp.Tuple[torch.Tensor, None]]:
        """Applies each replica to its band and stitches the bands back.

        Args:
            x: ``(B, C, F, T)``.
            skip: the decoder skip connection, same shape as ``x``.
            length: unused (frequency layers only).

        Returns:
            encoder: ``(B, C', F / stride, T)``; decoder: ``((B, C', F * stride, T), None)``.
        """
        if self.conv:
            return self._encode(x)
        if skip is None:
            raise ValueError("a wrapped decoder layer needs its skip connection")
        return self._decode(x, skip), None

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        # The number of bins is fixed by the STFT size: a constant even when exporting.
        freqs = int(x.shape[2])
        ratios = list(self.split_ratios) + [1]
        start = 0
        outs = []
        for ratio, layer in zip(ratios, tp.cast(tp.List[HEncLayer], list(self.layers))):
            kernel, stride = layer.kernel_size, layer.stride
            pad = kernel // 4
            if ratio == 1:
                limit = freqs
            else:
                # End the band where a whole number of conv windows ends.
                span = int(round(freqs * ratio)) - start
                if start == 0:
                    span += pad
                n_windows = round((span - kernel) / stride + 1)
                limit = start + (n_windows - 1) * stride + kernel
                if start == 0:
                    limit -= pad
            if not start < limit <= freqs:
                raise ValueError(
                    f"split_ratios {self.split_ratios} give an invalid band "
                    f"[{start}, {limit}) for {freqs} frequencies"
                )
            band = x[:, :, start:limit, :]
            band = F.pad(band, (0, 0, pad if start == 0 else 0, pad if ratio == 1 else 0))
            outs.append(layer(band))
            start = limit - kernel + stride
        return torch.cat(outs, dim=2)

    def _decode(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        freqs = int(x.shape[2])  # constant, see `_encode`
        ratios = list(self.split_ratios) + [1]
        start = 0
        outs: tp.List[torch.Tensor] = []
        last = False
        for ratio, layer in zip(ratios, tp.cast(tp.List[HDecLayer], list(self.layers))):
            stride = layer.stride
            limit = freqs if ratio == 1 else int(round(freqs * ratio))
            out, _ = layer.decode(x[:, :, start:limit], skip[:, :, start:limit], None)
            if outs:
                # The first `stride` rows overlap the previous band's last ones: sum them,
                # with the bias counted once.
                bias = tp.cast(torch.Tensor, getattr(layer.conv_tr, "bias")).view(1, -1, 1, 1)
                prev = outs[-1]
                outs[-1] = torch.cat(
                    [
                        prev[:, :, : prev.shape[2] - stride],
                        prev[:, :, prev.shape[2] - stride :] + out[:, :, :stride] - bias,
                    ],
                    dim=2,
                )
                out = out[:, :, stride:]
            if ratio == 1:
                out = out[:, :, : (-stride) // 2, :]
            if start == 0:
                out = out[:, :, stride // 2 :, :]
            outs.append(out)
            last = layer.last
            start = limit
        out = torch.cat(outs, dim=2)
        if not last:
            out = F.gelu(out)
        return out


def standardize(
    x: torch.Tensor, dims: tp.Tuple[int, ...]
) -> tp.Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x - mean) / (1e-5 + std)`` over ``dims``, as both hybrid models normalize
    their branch inputs; returns the result, mean and std (kept to undo it)."""
    mean = x.mean(dim=dims, keepdim=True)
    std = x.std(dim=dims, keepdim=True)
    return (x - mean) / (1e-5 + std), mean, std


class UNetSkips:
    """Skip connections and pre-layer lengths that the encoders keep for the decoders."""

    def __init__(self) -> None:
        self.saved: tp.List[torch.Tensor] = []  # frequency branch outputs
        self.saved_t: tp.List[torch.Tensor] = []  # time branch outputs
        self.lengths: tp.List[int] = []  # frequency branch input lengths
        self.lengths_t: tp.List[int] = []  # time branch input lengths


class HybridUNetMixin:
    """The two U-Nets (frequency and time branch) shared by :class:`HDemucs` and
    :class:`~demucs.htdemucs.HTDemucs`: construction, encoding and decoding.

    The host class sets ``audio_channels``, ``sources``, ``cac``, ``nfft``,
    ``kernel_size``, ``stride``, ``context`` and ``depth`` before calling
    :meth:`_build_unets`, and owns ``encoder``/``decoder``/``tencoder``/``tdecoder``.
    The layers are created in upstream's order, so a given seed gives upstream's
    initial weights, and under upstream's attribute names, so checkpoints load unchanged.
    """

    audio_channels: int
    sources: tp.List[str]
    cac: bool
    nfft: int
    kernel_size: int
    stride: int
    context: int
    depth: int
    encoder: nn.ModuleList
    decoder: nn.ModuleList
    tencoder: nn.ModuleList
    tdecoder: nn.ModuleList
    freq_emb: tp.Optional[ScaledEmbedding]
    freq_emb_scale: float

    def _build_unets(
        self,
        *,
        channels: int,
        channels_time: tp.Optional[int],
        growth: float,
        rewrite: bool,
        multi_freqs: tp.Optional[tp.Sequence[float]],
        multi_freqs_depth: int,
        freq_emb: float,
        emb_scale: float,
        emb_smooth: bool,
        time_stride: int,
        context_enc: int,
        norm_starts: int,
        norm_groups: int,
        dconv_mode: int,
        dconv_kw: tp.Callable[[int], tp.Dict[str, tp.Any]],
        hybrid: bool = True,
    ) -> None:
        """Creates the encoder/decoder layers of both branches, outermost first.

        The frequency axis shrinks by ``stride`` per layer; once it is no longer than
        the kernel, one layer collapses it to 1 and the time branch's matching layer is
        ``empty`` (just its strided convolution) so the two branches merge there. Later
        layers work over time only. ``dconv_kw(index)`` gives the DConv settings of
        layer ``index``; ``hybrid=False`` builds the frequency branch only.
        """
        spec_channels = 2 if self.cac else 1  # channels per audio channel, freq. branch
        chin = self.audio_channels
        chin_z = chin * spec_channels
        chout = channels_time or channels
        chout_z = channels
        freqs = self.nfft // 2

        for index in range(self.depth):
            freq = freqs > 1
            last_freq = freq and freqs <= self.kernel_size
            kw: tp.Dict[str, tp.Any] = {
                "kernel_size": (freqs if last_freq else self.kernel_size)
                if freq
                else time_stride * 2,
                "stride": self.stride if freq else time_stride,
                "freq": freq,
                "pad": not last_freq,
                "norm": index >= norm_starts,
                "rewrite": rewrite,
                "norm_groups": norm_groups,
                "dconv_kw": dconv_kw(index),
            }
            kw_time = dict(
                kw, freq=False, kernel_size=self.kernel_size, stride=self.stride, pad=True
            )
            multi = bool(multi_freqs) and index < multi_freqs_depth
            kw_dec = dict(kw, context_freq=False) if multi else dict(kw)
            if last_freq:
                chout_z = max(chout, chout_z)
                chout = chout_z
            with_time = hybrid and freq

            enc_layer = HEncLayer(
                chin_z, chout_z, dconv=bool(dconv_mode & 1), context=context_enc, **kw
            )
            if with_time:
                self.tencoder.append(
                    HEncLayer(
                        chin,
                        chout,
                        dconv=bool(dconv_mode & 1),
                        context=context_enc,
                        empty=last_freq,
                        **kw_time,
                    )
                )
            self.encoder.append(MultiWrap(enc_layer, multi_freqs or ()) if multi else enc_layer)

            if index == 0:
                chin = self.audio_channels * len(self.sources)
                chin_z = chin * spec_channels
            dec_layer = HDecLayer(
                chout_z,
                chin_z,
                dconv=bool(dconv_mode & 2),
                last=index == 0,
                context=self.context,
                **kw_dec,
            )
            dec: nn.Module = MultiWrap(dec_layer, multi_freqs or ()) if multi else dec_layer
            if with_time:
                self.tdecoder.insert(
                    0,
                    HDecLayer(
                        chout,
                        chin,
                        dconv=bool(dconv_mode & 2),
                        empty=last_freq,
                        last=index == 0,
                        context=self.context,
                        **kw_time,
                    ),
                )
            self.decoder.insert(0, dec)

            chin, chin_z = chout, chout_z
            chout, chout_z = int(growth * chout), int(growth * chout_z)
            if freq:
                freqs = 1 if freqs <= self.kernel_size else freqs // self.stride
            if index == 0 and freq_emb:
                self.freq_emb = ScaledEmbedding(freqs, chin_z, smooth=emb_smooth, scale=emb_scale)
                self.freq_emb_scale = freq_emb

    def _encode(
        self, x: torch.Tensor, xt: torch.Tensor
    ) -> tp.Tuple[torch.Tensor, torch.Tensor, UNetSkips]:
        """Runs both encoders; the time branch merges into the frequency branch
        (``inject``) at the layer where its encoder is ``empty``."""
        skips = UNetSkips()
        n_time_layers = len(self.tencoder)
        for idx, encode in enumerate(self.encoder):
            skips.lengths.append(x.shape[-1])
            inject = None
            if idx < n_time_layers:
                skips.lengths_t.append(xt.shape[-1])
                tenc = self.tencoder[idx]
                xt = tenc(xt)
                if tenc.empty:
                    inject = xt
                else:
                    skips.saved_t.append(xt)
            x = encode(x, inject)
            if idx == 0 and self.freq_emb is not None:
                # Lets the convolutions over frequencies depend on the absolute frequency.
                bins = torch.arange(x.shape[-2], device=x.device)
                emb = self.freq_emb(bins).t()[None, :, :, None].expand_as(x)
                x = x + self.freq_emb_scale * emb
            skips.saved.append(x)
        return x, xt, skips

    def _decode(
        self, x: torch.Tensor, xt: torch.Tensor, skips: UNetSkips
    ) -> tp.Tuple[torch.Tensor, torch.Tensor]:
        """Runs both decoders; the time branch splits off where its decoder is
        ``empty``, starting from the frequency decoder's pre-activation output
        (a single frequency row)."""
        offset = self.depth - len(self.tdecoder)
        for idx, decode in enumerate(self.decoder):
            x, pre = decode(x, skips.saved.pop(-1), skips.lengths.pop(-1))
            if idx < offset:
                continue
            tdec = self.tdecoder[idx - offset]
            length_t = skips.lengths_t.pop(-1)
            if tdec.empty:
                xt, _ = tdec(pre[:, :, 0], None, length_t)
            else:
                xt, _ = tdec(xt, skips.saved_t.pop(-1), length_t)
        return x, xt


class HDemucs(HybridUNetMixin, SpectralMixin, nn.Module):
    """Hybrid Demucs (v3): a spectrogram U-Net with an optional parallel waveform U-Net.

    The frequency branch convolves over frequencies until a single one is left, then
    continues over time; a hybrid model has a time branch that joins the frequency
    branch where both have the same time resolution (and splits from it again in the
    decoder). Output spectrograms come from masking (magnitude + Wiener filtering or
    mixture phase) or, with ``cac``, directly as complex-as-channels; they are turned
    back into waveforms by iSTFT and added to the time branch output.

    Input: mixture ``(B, audio_channels, L)``; output: sources ``(B, S, audio_channels, L)``.

    Args:
        sources: source names, ``S = len(sources)``.
        audio_channels: audio channels.
        channels: hidden channels of the first layer.
        channels_time: hidden channels of the first time layer (default ``channels``).
        growth: channel multiplier from one layer to the next.
        nfft: STFT size (hop ``nfft // 4``). In a hybrid model the time branch must
            reach the hop length when the frequency axis is collapsed: with the default
            kernel 8 and stride 4, ``nfft`` must be a power of 4 (256, 1024, 4096).
        wiener_iters: Wiener filtering iterations at evaluation (non-cac models);
            negative to use the mixture phase instead.
        end_iters: same during training; must equal ``wiener_iters`` for hybrid models.
        wiener_residual: add a residual source before Wiener filtering.
        cac: complex as channels (real and imaginary parts are channels).
        depth: number of encoder/decoder layers.
        rewrite: add the 1x1 rewrite convs.
        hybrid: add the time branch.
        hybrid_old: reproduce the padding of the models trained for MDX 2021.
        multi_freqs: band split ratios for :class:`MultiWrap` (None: no split).
        multi_freqs_depth: number of outermost layers wrapped with :class:`MultiWrap`.
        freq_emb: weight of the frequency embedding added after the first layer (0: none).
        emb_scale: learning rate scale of that embedding.
        emb_smooth: smooth initialization of that embedding.
        kernel_size: kernel size of the encoder/decoder layers.
        time_stride: stride of the time layers after the frequency axis is reduced to 1.
        stride: stride of the encoder/decoder layers.
        context: context of the decoder rewrite convs.
        context_enc: context of the encoder rewrite convs.
        norm_starts: first layer index with GroupNorm.
        norm_groups: GroupNorm groups.
        dconv_mode: DConv in the encoder (bit 1) and/or the decoder (bit 2).
        dconv_depth: branches per DConv.
        dconv_comp: DConv channel compression.
        dconv_attn: first layer index with LocalState attention in its DConv.
        dconv_lstm: first layer index with a BLSTM in its DConv.
        dconv_init: initial LayerScale of the DConv branches.
        rescale: initial weight rescaling reference (0 to disable).
        samplerate: sample rate of the training data (metadata).
        segment: duration in seconds of the chunks the model should be applied on.
        use_conv_stft: compute spectrograms with the exportable conv-STFT backend
            instead of ``torch.stft``. Not a model hyper-parameter: it is not recorded
            in the checkpoint arguments and can be switched at any time with
            ``model.use_conv_stft = ...``.
    """

    @capture_init
    def __init__(
        self,
        sources: tp.List[str],
        audio_channels: int = 2,
        channels: int = 48,
        channels_time: tp.Optional[int] = None,
        growth: float = 2,
        nfft: int = 4096,
        wiener_iters: int = 0,
        end_iters: int = 0,
        wiener_residual: bool = False,
        cac: bool = True,
        depth: int = 6,
        rewrite: bool = True,
        hybrid: bool = True,
        hybrid_old: bool = False,
        multi_freqs: tp.Optional[tp.Sequence[float]] = None,
        multi_freqs_depth: int = 2,
        freq_emb: float = 0.2,
        emb_scale: float = 10,
        emb_smooth: bool = True,
        kernel_size: int = 8,
        time_stride: int = 2,
        stride: int = 4,
        context: int = 1,
        context_enc: int = 0,
        norm_starts: int = 4,
        norm_groups: int = 4,
        dconv_mode: int = 1,
        dconv_depth: int = 2,
        dconv_comp: float = 4,
        dconv_attn: int = 4,
        dconv_lstm: int = 4,
        dconv_init: float = 1e-4,
        rescale: float = 0.1,
        samplerate: int = 44100,
        segment: float = 4 * 10,
        *,
        use_conv_stft: bool = False,
    ) -> None:
        super().__init__()
        # The STFT backend is a run-time choice, not part of the checkpoint arguments.
        init_args = getattr(self, "_init_args_kwargs", None)
        if init_args is not None:
            init_args[1].pop("use_conv_stft", None)
        if hybrid_old and not hybrid:
            raise ValueError("hybrid_old=True requires hybrid=True")
        if hybrid and wiener_iters != end_iters:
            raise ValueError(
                f"a hybrid model needs wiener_iters == end_iters, "
                f"got {wiener_iters} and {end_iters}"
            )
        if nfft < 4 or nfft % 4 != 0:
            raise ValueError(f"nfft must be a positive multiple of 4, got {nfft}")
        self.use_conv_stft = use_conv_stft
        self.cac = cac
        self.wiener_residual = wiener_residual
        self.audio_channels = audio_channels
        self.sources = sources
        self.kernel_size = kernel_size
        self.context = context
        self.stride = stride
        self.depth = depth
        self.channels = channels
        self.samplerate = samplerate
        self.segment = segment
        self.nfft = nfft
        self.hop_length = nfft // 4
        self.wiener_iters = wiener_iters
        self.end_iters = end_iters
        self.freq_emb: tp.Optional[ScaledEmbedding] = None
        self.hybrid = hybrid
        self.hybrid_old = hybrid_old

        self.encoder = nn.ModuleList()
        self.decoder = nn.ModuleList()
        self.tencoder = nn.ModuleList()  # stay empty without the time branch
        self.tdecoder = nn.ModuleList()

        def layer_dconv_kw(index: int) -> tp.Dict[str, tp.Any]:
            return dict(
                lstm=index >= dconv_lstm,
                attn=index >= dconv_attn,
                depth=dconv_depth,
                compress=dconv_comp,
                init=dconv_init,
                gelu=True,
            )

        self._build_unets(
            channels=channels,
            channels_time=channels_time,
            growth=growth,
            rewrite=rewrite,
            multi_freqs=multi_freqs,
            multi_freqs_depth=multi_freqs_depth,
            freq_emb=freq_emb,
            emb_scale=emb_scale,
            emb_smooth=emb_smooth,
            time_stride=time_stride,
            context_enc=context_enc,
            norm_starts=norm_starts,
            norm_groups=norm_groups,
            dconv_mode=dconv_mode,
            dconv_kw=layer_dconv_kw,
            hybrid=hybrid,
        )

        if rescale:
            rescale_module(self, reference=rescale)

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        """``mix``: ``(B, audio_channels, L)``; returns ``(B, S, audio_channels, L)``."""
        length = mix.shape[-1]
        z = self._spec(mix)
        x = self._magnitude(z)  # (B, C', Fq, T), real whatever the STFT backend
        batch, _, n_freqs, n_frames = x.shape

        # The frequency branch input is always normalized.
        x, mean, std = standardize(x, dims=(1, 2, 3))
        xt = mix
        if self.hybrid:
            xt, mean_t, std_t = standardize(mix, dims=(1, 2))

        x, xt, skips = self._encode(x, xt)
        # The decoders start from zeros: the signal comes through the skips.
        x, xt = self._decode(torch.zeros_like(x), xt, skips)

        n_sources = len(self.sources)
        x = x.view(batch, n_sources, -1, n_freqs, n_frames)
        x = x * std[:, None] + mean[:, None]
        zout = self._mask(z, x)
        out = self._ispec(zout, length)
        if self.hybrid:
            xt = xt.view(batch, n_sources, -1, length)
            out = out + xt * std_t[:, None] + mean_t[:, None]
        return out
