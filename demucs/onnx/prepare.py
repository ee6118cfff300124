"""The torch module that becomes the graph: a copy of the model (or of a bag's members)
in eval mode and float32, with the conv STFT backend, its segment fixed, wrapped so that
a bag mixes its members' outputs with the bag's weights."""

from __future__ import annotations

import copy
import typing as tp
from fractions import Fraction

import torch
from torch import nn

from ..spec import DEFAULT_STFT_IMPL, STFT_IMPLS
from ..states import set_stft_backend
from .graph import ExportError


Weights = tp.List[tp.List[float]]


def bag_members(model: nn.Module) -> tp.Tuple[tp.List[tp.Any], tp.Optional[Weights]]:
    """``(models, weights)`` of a bag, or ``([model], None)`` for a single model (Demucs
    models, typed ``Any``: their attributes are read by name)."""
    models = getattr(model, "models", None)
    weights = getattr(model, "weights", None)
    if models is not None and weights is not None:
        return list(models), [list(map(float, w)) for w in weights]
    return [model], None


def check_exportable(model: nn.Module) -> None:
    """Raises :class:`ExportError` if a (member) model cannot become an ONNX graph.

    Every Demucs family exports, Wiener filtering (``cac=False``, ``wiener_iters > 0``)
    included: :mod:`demucs.wiener` works on real tensors. Only modules without the
    attributes of a Demucs model are refused.
    """
    for attr in ("samplerate", "sources", "audio_channels"):
        if not hasattr(model, attr):
            raise ExportError(f"{type(model).__name__} has no {attr!r}: not a Demucs model")


def _segment_of(model: nn.Module) -> tp.Optional[Fraction]:
    seg = getattr(model, "segment", None)
    return None if seg is None else Fraction(seg).limit_denominator(10**6)


class ExportWrapper(nn.Module):
    """The module that becomes the graph: one model, or a bag mixed with its weights.

    For a bag, ``stems[:, k] = sum_m w[m][k] * member_m(mix)[:, k] / sum_m w[m][k]``,
    which is what ``apply_model`` computes for a bag on one segment without shifts.
    ``outputs`` (source indices) keeps only those stems.

    Input ``(B, C, L)``, output ``(B, S, C, L)``.
    """

    def __init__(
        self,
        models: tp.Sequence[nn.Module],
        weights: tp.Optional[tp.Sequence[tp.Sequence[float]]] = None,
        outputs: tp.Optional[tp.Sequence[int]] = None,
    ) -> None:
        super().__init__()
        self.models = nn.ModuleList(models)
        self.mix_weights: tp.Optional[tp.List[tp.List[float]]] = None
        first: tp.Any = models[0]
        self.outputs = None if outputs is None else list(outputs)
        self.sources: tp.List[str] = (
            [first.sources[k] for k in self.outputs]
            if self.outputs is not None
            else list(first.sources)
        )
        if weights is not None and len(models) > 1:
            num_sources = len(first.sources)
            totals = [sum(w[k] for w in weights) for k in range(num_sources)]
            for k, total in enumerate(totals):
                if total == 0:
                    raise ExportError(
                        f"source {first.sources[k]!r} has a total weight "
                        "of 0 in the bag: its output would be undefined"
                    )
            self.mix_weights = [[w[k] / totals[k] for k in range(num_sources)] for w in weights]

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        out = self._mixed(mix)
        if self.outputs is not None:
            out = out[:, self.outputs]
        return out

    def _mixed(self, mix: torch.Tensor) -> torch.Tensor:
        if self.mix_weights is None:
            return self.models[0](mix)
        out: tp.Optional[torch.Tensor] = None
        for member, weights in zip(self.models, self.mix_weights):
            if not any(weights):
                continue
            scale = torch.tensor(weights, dtype=mix.dtype, device=mix.device)
            estimate = member(mix) * scale[None, :, None, None]
            out = estimate if out is None else out + estimate
        assert out is not None
        return out


def prepare_model(
    model: nn.Module,
    *,
    segment: tp.Optional[float] = None,
    model_index: tp.Optional[int] = None,
    use_conv_stft: bool = True,
    stft_impl: str = DEFAULT_STFT_IMPL,
    stems: tp.Optional[tp.Sequence[str]] = None,
) -> tp.Tuple[ExportWrapper, int, int]:
    """A copy of ``model`` ready to trace, and its segment and input lengths in samples.

    Args:
        model: a single model or a ``BagOfModels``. Not modified.
        segment: segment in seconds; default the model's (training) segment. For a
            transformer model it cannot exceed the training segment.
        model_index: for a bag, export only this member.
        use_conv_stft: STFT backend of the copy (True for export; False gives the
            PyTorch reference with the ``torch`` backend).
        stft_impl: implementation of the conv backend, ``factored`` or ``conv`` (see
            :data:`demucs.spec.STFT_IMPLS`).
        stems: keep only these sources, and only the bag members they need (members
            whose weights are 0 for all of them are left out of the graph).
    Returns:
        ``(wrapper, segment_samples, input_samples)``.
    """
    members, weights = bag_members(model)
    if model_index is not None:
        if not 0 <= model_index < len(members):
            raise ExportError(
                f"--model-index {model_index} out of range: the bag has {len(members)} models"
            )
        members, weights = [members[model_index]], None
    outputs = None
    if stems is not None:
        members, weights, outputs = _select_stems(members, weights, stems)
    members = [copy.deepcopy(m).cpu().float().eval() for m in members]
    first = members[0]
    for member in members:
        check_exportable(member)
        set_stft_backend(member, use_conv_stft)
        _set_stft_impl(member, stft_impl)

    segments = {_segment_of(m) for m in members}
    if len(segments) != 1:
        raise ExportError(
            f"bag members have different segments {sorted(map(str, segments))}: "
            "export them one at a time with --model-index"
        )
    trained = segments.pop()
    if segment is None:
        if trained is None:
            raise ExportError("the model has no training segment: pass --segment")
        seconds = trained
    else:
        seconds = Fraction(segment).limit_denominator(10**6)
        if seconds <= 0:
            raise ExportError(f"segment must be > 0, got {segment}")
        if trained is not None and getattr(first, "use_train_segment", False):
            if seconds > trained:
                raise ExportError(
                    f"segment {float(seconds)} s is longer than the "
                    f"{float(trained)} s the transformer was trained on"
                )
    for member in members:
        if hasattr(member, "segment"):
            member.segment = seconds  # same as BagOfModels(segment=...) does
    segment_samples = int(seconds * first.samplerate)
    input_samples = segment_samples
    if hasattr(first, "valid_length"):
        input_samples = int(first.valid_length(segment_samples))
    return ExportWrapper(members, weights, outputs).eval(), segment_samples, input_samples


def _select_stems(
    members: tp.List[tp.Any], weights: tp.Optional[Weights], stems: tp.Sequence[str]
) -> tp.Tuple[tp.List[tp.Any], tp.Optional[Weights], tp.List[int]]:
    """The members the ``stems`` need, their weights, and the stems' source indices."""
    sources = list(members[0].sources)
    unknown = [stem for stem in stems if stem not in sources]
    if unknown or not stems:
        raise ExportError(
            f"unknown stems {unknown or list(stems)}: the model has {', '.join(sources)}"
        )
    wanted = [k for k, source in enumerate(sources) if source in stems]
    if weights is None:
        return members, None, wanted
    kept = [index for index, w in enumerate(weights) if any(w[k] != 0 for k in wanted)]
    return [members[i] for i in kept], [weights[i] for i in kept], wanted


def _set_stft_impl(model: nn.Module, stft_impl: str) -> None:
    """Sets ``stft_impl`` on every spectral (sub)module of ``model``."""
    if stft_impl not in STFT_IMPLS:
        raise ExportError(
            f"unknown STFT implementation {stft_impl!r}, expected one of {STFT_IMPLS}"
        )
    for module in model.modules():
        if hasattr(module, "use_conv_stft"):
            setattr(module, "stft_impl", stft_impl)


def parameter_bytes(
    model: nn.Module,
    model_index: tp.Optional[int] = None,
    stems: tp.Optional[tp.Sequence[str]] = None,
) -> int:
    """Bytes of the float32 parameters and buffers exported (one member, the members
    ``stems`` need, or all)."""
    members, weights = bag_members(model)
    if model_index is not None:
        members, weights = [members[model_index]], None
    if stems is not None:
        members = _select_stems(members, weights, stems)[0]
    return sum(t.numel() * 4 for m in members for t in m.state_dict().values())
