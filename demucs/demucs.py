"""Waveform Demucs (v2/v3) and its residual building blocks.

The module layout (and thus every ``state_dict`` key) follows upstream Demucs 4.0.1,
so its checkpoints load unchanged. Forward passes are export-safe: no branch depends
on tensor values, and all shape arithmetic uses Python ints.

Shapes use ``B`` batch, ``C`` channels, ``T`` time steps, ``S`` sources.
"""

from __future__ import annotations

import math
import typing as tp

import julius
import torch
from torch import nn
from torch.nn import functional as F

from .states import capture_init
from .transformer import LayerScale
from .utils import ceil_div, center_trim, unfold

__all__ = [
    "BLSTM",
    "LocalState",
    "DConv",
    "Demucs",
    "rescale_conv",
    "rescale_module",
    "resample_kernel",
    "resample_frac",
]

_CONV_TYPES = (nn.Conv1d, nn.ConvTranspose1d, nn.Conv2d, nn.ConvTranspose2d)


# ---------------------------------------------------------------------------------------
# Resampling: julius' windowed-sinc filters, applied with Python-int shape arithmetic
# ---------------------------------------------------------------------------------------


def resample_kernel(
    old_sr: int, new_sr: int, zeros: int = 24, rolloff: float = 0.945
) -> tp.Tuple[torch.Tensor, int, int]:
    """The polyphase filter bank julius uses to resample from ``old_sr`` to ``new_sr``.

    Returns:
        ``(kernel, old, new)``: ``old/new`` is the ratio ``old_sr/new_sr`` reduced by
        their gcd and ``kernel`` is ``(new, 1, 2 * width + old)``.
    """
    if old_sr <= 0 or new_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {old_sr} and {new_sr}")
    gcd = math.gcd(old_sr, new_sr)
    old, new = old_sr // gcd, new_sr // gcd
    if old == new:
        raise ValueError("resampling between equal rates needs no kernel")
    resampler = julius.ResampleFrac(old, new, zeros=zeros, rolloff=rolloff)
    kernel: torch.Tensor = tp.cast(torch.Tensor, resampler.kernel)
    return kernel.detach().clone(), old, new


def resample_frac(x: torch.Tensor, kernel: torch.Tensor, old: int, new: int) -> torch.Tensor:
    """Resamples the last axis by ``new / old``, exactly as ``julius.resample_frac``.

    Args:
        x: tensor ``(*other, T)``.
        kernel: ``(new, 1, 2 * width + old)`` filters from :func:`resample_kernel`.
        old, new: the reduced rate ratio that came with ``kernel``.

    Returns:
        tensor ``(*other, floor(T * new / old))``.
    """
    width = (kernel.shape[-1] - old) // 2
    *other, length = x.shape
    flat = F.pad(x.reshape(-1, 1, length), (width, width + old), mode="replicate")
    phases = F.conv1d(flat, kernel.to(x), stride=old)  # (N, new, frames)
    out = phases.transpose(1, 2).reshape(*other, -1)
    return out[..., : (length * new) // old]


# ---------------------------------------------------------------------------------------
# Weight init
# ---------------------------------------------------------------------------------------


@torch.no_grad()
def rescale_conv(conv: tp.Any, reference: float) -> None:
    """Divides a conv's weight and bias by ``sqrt(std(weight) / reference)``.

    This moves the initial weight standard deviation towards ``reference`` (an init
    trick from Demucs v2 that speeds up training).
    """
    std = conv.weight.std()
    scale = (std / reference) ** 0.5
    conv.weight.div_(scale)
    if conv.bias is not None:
        conv.bias.div_(scale)


def rescale_module(module: nn.Module, reference: float) -> None:
    """Applies :func:`rescale_conv` to every (transposed) 1d/2d convolution in ``module``."""
    for sub in module.modules():
        if isinstance(sub, _CONV_TYPES):
            rescale_conv(sub, reference)


# ---------------------------------------------------------------------------------------
# Residual branch blocks
# ---------------------------------------------------------------------------------------


class BLSTM(nn.Module):
    """Bidirectional LSTM over time whose output has as many channels as its input.

    With ``max_steps``, long inputs are cut into frames of ``max_steps`` steps
    overlapping by half, each processed independently; the central part of every
    frame is kept (a quarter frame is dropped on each inner edge).

    Args:
        dim: channels ``C`` of input, hidden state (per direction) and output.
        layers: number of stacked LSTM layers.
        max_steps: frame length for long inputs (a multiple of 4), or None.
        skip: add the input to the output.
    """

    def __init__(
        self, dim: int, layers: int = 1, max_steps: tp.Optional[int] = None, skip: bool = False
    ) -> None:
        super().__init__()
        if max_steps is not None and (max_steps <= 0 or max_steps % 4 != 0):
            raise ValueError(f"max_steps must be a positive multiple of 4, got {max_steps}")
        self.max_steps = max_steps
        self.lstm = nn.LSTM(bidirectional=True, num_layers=layers, hidden_size=dim, input_size=dim)
        self.linear = nn.Linear(2 * dim, dim)
        self.skip = skip

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, T)`` -> ``(N, C, T)`` through the LSTM and the output projection.

        Under ``demucs.precision``'s autocast the LSTM stays float32: its state would
        accumulate bf16 rounding over time, and oneDNN has no bf16 LSTM on some CPUs."""
        seq = x.permute(2, 0, 1)
        if torch.is_autocast_enabled(seq.device.type):
            with torch.autocast(seq.device.type, enabled=False):
                y = self.lstm(seq.float())[0]
        else:
            y = self.lstm(seq)[0]
        return self.linear(y).permute(1, 2, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, C, T)``; returns ``(B, C, T)``."""
        batch, channels, length = x.shape
        if self.max_steps is None or length <= self.max_steps:
            out = self._run(x)
        else:
            width = self.max_steps
            stride = width // 2
            margin = stride // 2
            frames = unfold(x, width, stride)  # (B, C, N, width)
            n_frames = frames.shape[2]
            flat = frames.permute(0, 2, 1, 3).reshape(-1, channels, width)
            processed = self._run(flat).reshape(batch, n_frames, channels, width)
            pieces = [processed[:, 0, :, : width - margin]]
            pieces += [processed[:, k, :, margin : width - margin] for k in range(1, n_frames - 1)]
            pieces.append(processed[:, n_frames - 1, :, margin:])
            out = torch.cat(pieces, dim=-1)[..., :length]
        if self.skip:
            out = out + x
        return out


class LocalState(nn.Module):
    """Self-attention over time with content-based, learnt decaying locality penalties.

    There is no positional embedding: each head learns, per query, how fast its
    attention decays with the time distance (``ndecay`` decay rates mixed with a
    sigmoid gate). A step never attends to itself.

    Args:
        channels: input/output channels, divisible by ``heads``.
        heads: number of attention heads.
        nfreqs: number of periodic (cosine) attention kernels; 0 disables them.
        ndecay: number of decay rates; 0 disables the locality penalty.
    """

    def __init__(self, channels: int, heads: int = 4, nfreqs: int = 0, ndecay: int = 4) -> None:
        super().__init__()
        if channels % heads != 0:
            raise ValueError(f"channels ({channels}) must be divisible by heads ({heads})")
        self.heads = heads
        self.nfreqs = nfreqs
        self.ndecay = ndecay
        self.content = nn.Conv1d(channels, channels, 1)
        self.query = nn.Conv1d(channels, channels, 1)
        self.key = nn.Conv1d(channels, channels, 1)
        if nfreqs:
            self.query_freqs = nn.Conv1d(channels, heads * nfreqs, 1)
        if ndecay:
            self.query_decay = nn.Conv1d(channels, heads * ndecay, 1)
            with torch.no_grad():
                # The gate is sigmoid(...): start close to 0, i.e. with the widest window.
                self.query_decay.weight.mul_(0.01)
                tp.cast(torch.Tensor, self.query_decay.bias).fill_(-2.0)
        self.proj = nn.Conv1d(channels + heads * nfreqs, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, C, T)``; returns ``x`` plus the attended content, ``(B, C, T)``."""
        batch, _, length = x.shape
        heads = self.heads
        steps = torch.arange(length, device=x.device, dtype=x.dtype)
        delta = steps[:, None] - steps[None, :]  # (key t, query s)

        queries = self.query(x).view(batch, heads, -1, length)
        keys = self.key(x).view(batch, heads, -1, length)
        dots = torch.einsum("bhct,bhcs->bhts", keys, queries) / keys.shape[2] ** 0.5

        freq_kernel: tp.Optional[torch.Tensor] = None
        if self.nfreqs:
            periods = torch.arange(1, self.nfreqs + 1, device=x.device, dtype=x.dtype)
            freq_kernel = torch.cos(2 * math.pi * delta / periods.view(-1, 1, 1))
            freq_q = self.query_freqs(x).view(batch, heads, -1, length) / self.nfreqs**0.5
            dots = dots + torch.einsum("fts,bhfs->bhts", freq_kernel, freq_q)
        if self.ndecay:
            decays = torch.arange(1, self.ndecay + 1, device=x.device, dtype=x.dtype)
            decay_q = torch.sigmoid(self.query_decay(x).view(batch, heads, -1, length)) / 2
            decay_kernel = -decays.view(-1, 1, 1) * delta.abs() / self.ndecay**0.5
            dots = dots + torch.einsum("fts,bhfs->bhts", decay_kernel, decay_q)

        self_mask = steps[:, None] == steps[None, :]  # torch.eye, minus ONNX EyeLike(bool)
        dots = dots.masked_fill(self_mask, -100.0)
        weights = torch.softmax(dots, dim=2)

        content = self.content(x).view(batch, heads, -1, length)
        result = torch.einsum("bhts,bhct->bhcs", weights, content)
        if freq_kernel is not None:
            time_sig = torch.einsum("bhts,fts->bhfs", weights, freq_kernel)
            result = torch.cat([result, time_sig], 2)
        return x + self.proj(result.reshape(batch, -1, length))


def _group_norm_or_identity(enabled: bool, groups: int = 1) -> tp.Callable[[int], nn.Module]:
    """Factory of normalization layers: ``GroupNorm(groups, dim)`` or ``Identity``."""
    if enabled:
        return lambda dim: nn.GroupNorm(groups, dim)
    return lambda dim: nn.Identity()


class DConv(nn.Module):
    """Stack of residual branches of dilated 1d convolutions (the "DConv" of Demucs v3).

    Each branch projects ``channels`` down to ``channels / compress``, runs a dilated
    convolution (optionally followed by a BLSTM and/or a LocalState attention), comes
    back with a 1x1 conv + GLU and is scaled by a LayerScale before being added back.

    Args:
        channels: input/output channels ``C``.
        compress: channel compression factor inside the branches.
        depth: number of branches; the dilation of branch ``d`` is ``2 ** d``. A negative
            value means ``abs(depth)`` branches without dilation.
        init: initial LayerScale value.
        norm: use GroupNorm(1, .) inside the branches.
        attn: add a :class:`LocalState` attention in each branch.
        heads: heads of the attention.
        ndecay: decay rates of the attention.
        lstm: add a :class:`BLSTM` (2 layers, frames of 200 steps) in each branch.
        gelu: GELU activation (else ReLU).
        kernel: kernel size of the dilated convolutions (odd).
        dilate: allow dilation (combined with the sign of ``depth``).
    """

    def __init__(
        self,
        channels: int,
        compress: float = 4,
        depth: int = 2,
        init: float = 1e-4,
        norm: bool = True,
        attn: bool = False,
        heads: int = 4,
        ndecay: int = 4,
        lstm: bool = False,
        gelu: bool = True,
        kernel: int = 3,
        dilate: bool = True,
    ) -> None:
        super().__init__()
        if kernel % 2 != 1:
            raise ValueError(f"kernel must be odd, got {kernel}")
        self.channels = channels
        self.compress = compress
        self.depth = abs(depth)
        use_dilation = dilate and depth > 0
        norm_fn = _group_norm_or_identity(norm)
        act: tp.Type[nn.Module] = nn.GELU if gelu else nn.ReLU
        hidden = int(channels / compress)

        self.layers = nn.ModuleList()
        for d in range(self.depth):
            dilation = 2**d if use_dilation else 1
            # Modules are created in upstream's order (both convs, then attention, then
            # LSTM) so that a seeded init matches; in the branch the LSTM comes first.
            conv_in = nn.Conv1d(
                channels, hidden, kernel, dilation=dilation, padding=dilation * (kernel // 2)
            )
            conv_out = nn.Conv1d(hidden, 2 * channels, 1)
            middle: tp.List[nn.Module] = []
            if attn:
                middle.append(LocalState(hidden, heads=heads, ndecay=ndecay))
            if lstm:
                middle.insert(0, BLSTM(hidden, layers=2, max_steps=200, skip=True))
            mods = [
                conv_in,
                norm_fn(hidden),
                act(),
                *middle,
                conv_out,
                norm_fn(2 * channels),
                nn.GLU(1),
                LayerScale(channels, init),
            ]
            self.layers.append(nn.Sequential(*mods))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, C, T)``; returns ``(B, C, T)``."""
        layers: tp.List[tp.Any] = list(self.layers)
        for layer in layers:
            *branch, scale = layer  # the LayerScale is fused with the residual sum
            y = x
            for module in branch:
                y = module(y)
            x = scale.add_to(x, y)
        return x


# ---------------------------------------------------------------------------------------
# The waveform model
# ---------------------------------------------------------------------------------------


class Demucs(nn.Module):
    """Waveform U-Net source separation model (Demucs v2, and v3 with DConv branches).

    Input is a mixture ``(B, audio_channels, T)``, output the sources
    ``(B, S, audio_channels, T)``.

    Args:
        sources: source names, ``S = len(sources)``.
        audio_channels: channels of the audio (2 for stereo).
        channels: channels of the first encoder layer.
        growth: channel multiplier from one layer to the next.
        depth: number of encoder (and decoder) layers.
        rewrite: add a 1x1 conv (and GLU/ReLU) to each layer.
        lstm_layers: layers of the BLSTM between encoder and decoder, 0 for none.
        kernel_size: kernel size of the strided (transposed) convolutions.
        stride: their stride.
        context: the decoder rewrite conv has kernel ``2 * context + 1``.
        gelu: GELU activations (else ReLU).
        glu: GLU after the rewrite convs (else ReLU).
        norm_starts: first layer index using GroupNorm (decoder layers mirror the encoder).
        norm_groups: number of GroupNorm groups.
        dconv_mode: DConv branches in the encoder (bit 1) and/or the decoder (bit 2).
        dconv_depth: branches per DConv.
        dconv_comp: DConv channel compression.
        dconv_attn: first layer index with LocalState attention in its DConv.
        dconv_lstm: first layer index with a BLSTM in its DConv.
        dconv_init: initial LayerScale of the DConv branches.
        normalize: standardize the input (by the statistics of its mono downmix) and
            undo it on the output.
        resample: upsample the input x2 before the network, downsample x2 after.
        rescale: initial weight rescaling reference (0 to disable).
        samplerate: sample rate of the training data (metadata).
        segment: duration in seconds of the chunks the model should be applied on.
    """

    @capture_init
    def __init__(
        self,
        sources: tp.List[str],
        audio_channels: int = 2,
        channels: int = 64,
        growth: float = 2.0,
        depth: int = 6,
        rewrite: bool = True,
        lstm_layers: int = 0,
        kernel_size: int = 8,
        stride: int = 4,
        context: int = 1,
        gelu: bool = True,
        glu: bool = True,
        norm_starts: int = 4,
        norm_groups: int = 4,
        dconv_mode: int = 1,
        dconv_depth: int = 2,
        dconv_comp: float = 4,
        dconv_attn: int = 4,
        dconv_lstm: int = 4,
        dconv_init: float = 1e-4,
        normalize: bool = True,
        resample: bool = True,
        rescale: float = 0.1,
        samplerate: int = 44100,
        segment: float = 4 * 10,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        if kernel_size < stride:
            raise ValueError(f"kernel_size ({kernel_size}) must be >= stride ({stride})")
        self.audio_channels = audio_channels
        self.sources = sources
        self.kernel_size = kernel_size
        self.context = context
        self.stride = stride
        self.depth = depth
        self.resample = resample
        self.channels = channels
        self.normalize = normalize
        self.samplerate = samplerate
        self.segment = segment
        self.encoder = nn.ModuleList()
        self.decoder = nn.ModuleList()
        self.skip_scales = nn.ModuleList()  # unused; kept for checkpoint compatibility

        activation: nn.Module = nn.GLU(dim=1) if glu else nn.ReLU()
        ch_scale = 2 if glu else 1
        act2: tp.Type[nn.Module] = nn.GELU if gelu else nn.ReLU

        in_channels = audio_channels
        for index in range(depth):
            norm_fn = _group_norm_or_identity(index >= norm_starts, norm_groups)
            dconv_kw: tp.Dict[str, tp.Any] = dict(
                depth=dconv_depth,
                init=dconv_init,
                compress=dconv_comp,
                attn=index >= dconv_attn,
                lstm=index >= dconv_lstm,
            )

            encode: tp.List[nn.Module] = [
                nn.Conv1d(in_channels, channels, kernel_size, stride),
                norm_fn(channels),
                act2(),
            ]
            if dconv_mode & 1:
                encode.append(DConv(channels, **dconv_kw))
            if rewrite:
                encode += [
                    nn.Conv1d(channels, ch_scale * channels, 1),
                    norm_fn(ch_scale * channels),
                    activation,
                ]
            self.encoder.append(nn.Sequential(*encode))

            out_channels = in_channels if index > 0 else len(sources) * audio_channels
            decode: tp.List[nn.Module] = []
            if rewrite:
                decode += [
                    nn.Conv1d(channels, ch_scale * channels, 2 * context + 1, padding=context),
                    norm_fn(ch_scale * channels),
                    activation,
                ]
            if dconv_mode & 2:
                decode.append(DConv(channels, **dconv_kw))
            decode.append(nn.ConvTranspose1d(channels, out_channels, kernel_size, stride))
            if index > 0:
                decode += [norm_fn(out_channels), act2()]
            self.decoder.insert(0, nn.Sequential(*decode))

            in_channels = channels
            channels = int(growth * channels)

        self.lstm: tp.Optional[BLSTM] = BLSTM(in_channels, lstm_layers) if lstm_layers else None

        if rescale:
            rescale_module(self, reference=rescale)

        # Resampling filters: non persistent, so the state_dict keys match upstream's.
        up, _, _ = resample_kernel(1, 2)
        down, _, _ = resample_kernel(2, 1)
        self.register_buffer("_upsample_kernel", up, persistent=False)
        self.register_buffer("_downsample_kernel", down, persistent=False)

    def valid_length(self, length: int) -> int:
        """Smallest input length ``>= length`` that the convolutions use without leftover.

        The forward pass pads its input to this length (and trims the output back), so
        any length works; this only tells how much padding happens.
        """
        # No augmented assignment: while tracing, `length` may be a shape tensor that
        # `*=` would modify in place.
        steps = length * 2 if self.resample else length
        for _ in range(self.depth):
            steps = max(1, ceil_div(steps - self.kernel_size, self.stride) + 1)
        for _ in range(self.depth):
            steps = (steps - 1) * self.stride + self.kernel_size
        if self.resample:
            steps = ceil_div(steps, 2)
        return int(steps)

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        """``mix``: ``(B, audio_channels, T)``; returns ``(B, S, audio_channels, T)``."""
        length = mix.shape[-1]
        x = mix
        if self.normalize:
            mono = mix.mean(dim=1, keepdim=True)
            mean = mono.mean(dim=-1, keepdim=True)
            std = mono.std(dim=-1, keepdim=True)
            x = (x - mean) / (1e-5 + std)

        delta = self.valid_length(length) - length
        x = F.pad(x, (delta // 2, delta - delta // 2))
        if self.resample:
            x = resample_frac(x, tp.cast(torch.Tensor, self._upsample_kernel), 1, 2)

        saved: tp.List[torch.Tensor] = []
        for encode in self.encoder:
            x = encode(x)
            saved.append(x)
        if self.lstm is not None:
            x = self.lstm(x)
        for decode in self.decoder:
            skip = center_trim(saved.pop(-1), x)
            x = decode(x + skip)

        if self.resample:
            x = resample_frac(x, tp.cast(torch.Tensor, self._downsample_kernel), 2, 1)
        if self.normalize:
            x = x * std + mean
        x = center_trim(x, length)
        return x.view(x.shape[0], len(self.sources), self.audio_channels, x.shape[-1])

    def load_state_dict(  # type: ignore[override]  # upstream names the state `state`
        self,
        state: tp.Optional[tp.Mapping[str, tp.Any]] = None,
        strict: bool = True,
        assign: bool = False,
        *,
        state_dict: tp.Optional[tp.Mapping[str, tp.Any]] = None,
    ) -> tp.Any:
        """Loads a state, also accepting the key layout of older Demucs checkpoints.

        Very old checkpoints had no norm slot in each layer, so their rewrite conv is
        ``{encoder,decoder}.{i}.2`` instead of ``.3``; such keys are renamed. The state
        is passed positionally or as ``state=`` (upstream's name) or ``state_dict=``
        (torch's).
        """
        given = state if state is not None else state_dict
        if given is None or (state is not None and state_dict is not None):
            raise TypeError("load_state_dict() takes exactly one state (state= or state_dict=)")
        keys = dict(given)
        for idx in range(self.depth):
            for part in ("encoder", "decoder"):
                for name in ("bias", "weight"):
                    new = f"{part}.{idx}.3.{name}"
                    old = f"{part}.{idx}.2.{name}"
                    if old in keys and new not in keys:
                        keys[new] = keys.pop(old)
        return super().load_state_dict(keys, strict=strict, assign=assign)
