"""Hybrid Transformer Demucs (HTDemucs, Demucs v4).

Two U-Nets run side by side: one over the waveform (time branch) and one over the
spectrogram (frequency branch, complex-as-channels or magnitude). Their innermost
representations are exchanged by a cross-domain transformer, then each branch is decoded
and the two estimates are summed.

Differences from upstream 4.0.1, none of which touch the checkpoint format:

* ``use_conv_stft``: compute the STFT/iSTFT as real convolutions over a DFT basis
  (:mod:`demucs.spec`) so the whole forward pass is real-valued and exports to ONNX.
  It can be passed to the constructor or flipped on a loaded model
  (``model.use_conv_stft = True``). It is never saved in a checkpoint.
* The forward pass has no asserts or data-dependent branches (export-safe).
"""

from __future__ import annotations

import typing as tp
from fractions import Fraction

import torch
from einops import rearrange
from torch import nn
from torch.nn import functional as F

from .demucs import rescale_module
from .hdemucs import HybridUNetMixin, ScaledEmbedding, standardize
from .spec import SpectralMixin
from .states import capture_init
from .transformer import CrossTransformerEncoder

Tensor = torch.Tensor

#: Constructor arguments that only select a runtime behaviour: never saved in checkpoints.
RUNTIME_ONLY_KWARGS = ("use_conv_stft",)


class HTDemucs(HybridUNetMixin, SpectralMixin, nn.Module):
    """Hybrid Transformer Demucs.

    Args (the same as upstream 4.0.1, same defaults):
        sources: names of the sources to separate, e.g. ["drums", "bass", "other", "vocals"].
        audio_channels: input/output audio channels.
        channels: hidden channels of the first layer; multiplied by ``growth`` per layer.
        channels_time: hidden channels of the time branch if different from ``channels``.
        growth: channel growth factor per layer.
        nfft: FFT size of the spectrogram branch; the hop is ``nfft // 4``.
        wiener_iters / end_iters: Wiener filtering iterations at test / train time when
            ``cac`` is False (negative: use the mixture phase); must be equal.
        wiener_residual: add a residual source before Wiener filtering.
        cac: complex-as-channels: the frequency branch sees and predicts real and
            imaginary parts as channels, and no masking is done.
        depth: number of encoder (and decoder) layers.
        rewrite: 1x1 (or context) convolution with GLU in each layer.
        multi_freqs / multi_freqs_depth: split the outer layers into frequency bands
            (:class:`MultiWrap`).
        freq_emb / emb_scale / emb_smooth: frequency embedding after the first
            frequency layer: weight, learning-rate scale, smooth initialisation.
        kernel_size, stride: of the encoder/decoder layers; ``time_stride`` for the
            time layers that remain once the frequency axis is reduced to 1.
        context / context_enc: context of the 1x1 convolutions in decoder / encoder.
        norm_starts, norm_groups: group norm from this layer on, with that many groups.
        dconv_mode (1: encoder, 2: decoder, 3: both), dconv_depth, dconv_comp,
            dconv_init: residual dilated-convolution branch settings.
        bottom_channels: if > 0, 1x1 convolutions change the channel count around the
            transformer.
        t_*: cross-transformer settings, see :class:`CrossTransformerEncoder`.
        rescale: weight rescaling at initialisation (training only).
        samplerate, segment: sample rate and training segment length in seconds.
        use_train_segment: pad inputs to the training segment at inference time.
        use_conv_stft: STFT backend, see the module docstring. Not saved.

    Input ``(B, audio_channels, L)``, output ``(B, len(sources), audio_channels, L)``.
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
        depth: int = 4,
        rewrite: bool = True,
        multi_freqs: tp.Optional[tp.List[float]] = None,
        multi_freqs_depth: int = 3,
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
        dconv_comp: int = 8,
        dconv_init: float = 1e-3,
        bottom_channels: int = 0,
        t_layers: int = 5,
        t_emb: str = "sin",
        t_hidden_scale: float = 4.0,
        t_heads: int = 8,
        t_dropout: float = 0.0,
        t_max_positions: int = 10000,
        t_norm_in: bool = True,
        t_norm_in_group: bool = False,
        t_group_norm: bool = False,
        t_norm_first: bool = True,
        t_norm_out: bool = True,
        t_max_period: float = 10000.0,
        t_weight_decay: float = 0.0,
        t_lr: tp.Optional[float] = None,
        t_layer_scale: bool = True,
        t_gelu: bool = True,
        t_weight_pos_embed: float = 1.0,
        t_sin_random_shift: int = 0,
        t_cape_mean_normalize: bool = True,
        t_cape_augment: bool = True,
        t_cape_glob_loc_scale: tp.Sequence[float] = (5000.0, 1.0, 1.4),
        t_sparse_self_attn: bool = False,
        t_sparse_cross_attn: bool = False,
        t_mask_type: str = "diag",
        t_mask_random_seed: int = 42,
        t_sparse_attn_window: int = 500,
        t_global_window: int = 100,
        t_sparsity: float = 0.95,
        t_auto_sparsity: bool = False,
        t_cross_first: bool = False,
        rescale: float = 0.1,
        samplerate: int = 44100,
        segment: tp.Union[float, Fraction] = 10,
        use_train_segment: bool = True,
        use_conv_stft: bool = False,
    ) -> None:
        super().__init__()
        if wiener_iters != end_iters:
            raise ValueError(f"wiener_iters ({wiener_iters}) must equal end_iters ({end_iters})")
        self.cac = cac
        self.wiener_residual = wiener_residual
        self.audio_channels = audio_channels
        self.sources = sources
        self.kernel_size = kernel_size
        self.context = context
        self.stride = stride
        self.depth = depth
        self.bottom_channels = bottom_channels
        self.channels = channels
        self.samplerate = samplerate
        self.segment = segment
        self.use_train_segment = use_train_segment
        self.nfft = nfft
        self.hop_length = nfft // 4
        self.wiener_iters = wiener_iters
        self.end_iters = end_iters
        self.use_conv_stft = use_conv_stft
        self.freq_emb: tp.Optional[ScaledEmbedding] = None

        self.encoder = nn.ModuleList()
        self.decoder = nn.ModuleList()
        self.tencoder = nn.ModuleList()
        self.tdecoder = nn.ModuleList()
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
            dconv_kw=lambda index: {
                "depth": dconv_depth,
                "compress": dconv_comp,
                "init": dconv_init,
                "gelu": True,
            },
        )
        if rescale:
            rescale_module(self, reference=rescale)

        dim = int(channels * growth ** (depth - 1))
        if bottom_channels:
            self.channel_upsampler = nn.Conv1d(dim, bottom_channels, 1)
            self.channel_downsampler = nn.Conv1d(bottom_channels, dim, 1)
            self.channel_upsampler_t = nn.Conv1d(dim, bottom_channels, 1)
            self.channel_downsampler_t = nn.Conv1d(bottom_channels, dim, 1)
            dim = bottom_channels

        self.crosstransformer: tp.Optional[CrossTransformerEncoder] = None
        if t_layers > 0:
            self.crosstransformer = CrossTransformerEncoder(
                dim=dim,
                emb=t_emb,
                hidden_scale=t_hidden_scale,
                num_heads=t_heads,
                num_layers=t_layers,
                cross_first=t_cross_first,
                dropout=t_dropout,
                max_positions=t_max_positions,
                norm_in=t_norm_in,
                norm_in_group=t_norm_in_group,
                group_norm=t_group_norm,
                norm_first=t_norm_first,
                norm_out=t_norm_out,
                max_period=t_max_period,
                weight_decay=t_weight_decay,
                lr=t_lr,
                layer_scale=t_layer_scale,
                gelu=t_gelu,
                sin_random_shift=t_sin_random_shift,
                weight_pos_embed=t_weight_pos_embed,
                cape_mean_normalize=t_cape_mean_normalize,
                cape_augment=t_cape_augment,
                cape_glob_loc_scale=list(t_cape_glob_loc_scale),
                sparse_self_attn=t_sparse_self_attn,
                sparse_cross_attn=t_sparse_cross_attn,
                mask_type=t_mask_type,
                mask_random_seed=t_mask_random_seed,
                sparse_attn_window=t_sparse_attn_window,
                global_window=t_global_window,
                sparsity=t_sparsity,
                auto_sparsity=t_auto_sparsity,
            )

    # ------------------------------------------------------------------ inference API

    def valid_length(self, length: int) -> int:
        """Input length the model works on: the training length when
        ``use_train_segment`` (inputs are padded to it), else ``length`` itself.

        Raises:
            ValueError: ``length`` is longer than the training segment.
        """
        if not self.use_train_segment:
            return length
        training_length = int(self.segment * self.samplerate)
        if training_length < length:
            raise ValueError(
                f"Given length {length} is longer than training length {training_length}"
            )
        return training_length

    def forward(self, mix: Tensor) -> Tensor:
        """Separates ``mix`` (B, C, L) into (B, S, C, L)."""
        length = mix.shape[-1]
        work_length = length
        if self.use_train_segment:
            if self.training:
                self.segment = Fraction(length, self.samplerate)
            else:
                work_length = int(self.segment * self.samplerate)
                if length < work_length:
                    mix = F.pad(mix, (0, work_length - length))
                else:
                    work_length = length

        z = self._spec(mix)
        x, mean, std = standardize(self._magnitude(z).to(mix.device), dims=(1, 2, 3))
        xt, meant, stdt = standardize(mix, dims=(1, 2))
        B, _, Fq, T = x.shape

        x, xt, skips = self._encode(x, xt)
        x, xt = self._bottleneck(x, xt)
        x, xt = self._decode(x, xt, skips)

        S = len(self.sources)
        x = x.view(B, S, -1, Fq, T) * std[:, None] + mean[:, None]
        x = self._ispec(self._mask(z, x), work_length)
        xt = xt.view(B, S, -1, work_length) * stdt[:, None] + meant[:, None]
        out = xt + x
        if work_length != length:
            out = out[..., :length]
        return out

    # ------------------------------------------------------------------ forward parts

    def _bottleneck(self, x: Tensor, xt: Tensor) -> tp.Tuple[Tensor, Tensor]:
        """Cross-domain transformer between x (B, C, Fr, T) and xt (B, C, T')."""
        if self.crosstransformer is None:
            return x, xt
        if self.bottom_channels:
            f = x.shape[2]
            x = rearrange(
                self.channel_upsampler(rearrange(x, "b c f t -> b c (f t)")),
                "b c (f t) -> b c f t",
                f=f,
            )
            xt = self.channel_upsampler_t(xt)
        x, xt = self.crosstransformer(x, xt)
        if self.bottom_channels:
            x = rearrange(
                self.channel_downsampler(rearrange(x, "b c f t -> b c (f t)")),
                "b c (f t) -> b c f t",
                f=f,
            )
            xt = self.channel_downsampler_t(xt)
        return x, xt


__all__ = ["HTDemucs", "RUNTIME_ONLY_KWARGS"]
