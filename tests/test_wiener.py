"""Tests for demucs/wiener.py: complex helpers, parity with open-unmix's ``wiener`` and
upstream ``HTDemucs._wiener`` (through the oracle), zero-phase handling, ONNX export."""

from __future__ import annotations

import itertools
import os
import warnings

import pytest
import torch

from demucs import wiener as W
from tests import oracle as _oracle

TOL = 1e-5  # max abs error, relative to the reference's max abs value
# open-unmix's own atan2 adds a float32 pi even to float64 inputs (phase errors ~1e-7),
# so float64 parity cannot be tighter than that; ours follows torch.atan2 to 1e-15.
TOL_F64 = 1e-7


def _require_oracle() -> None:
    # Same policy as the function-scoped ``oracle`` fixture, usable at module scope.
    _oracle.require()


def _close(ours: torch.Tensor, ref: torch.Tensor, tol: float = TOL) -> None:
    assert ours.shape == ref.shape
    assert ours.dtype == ref.dtype
    scale = ref.abs().max().item()
    err = (ours - ref).abs().max().item()
    assert err <= tol * max(scale, 1e-30), f"max abs err {err:.3g} vs scale {scale:.3g}"


def _random_case(
    frames: int,
    bins: int,
    channels: int,
    sources: int,
    seed: int,
    dtype: torch.dtype = torch.float32,
    amp: float = 40.0,
) -> dict:
    gen = torch.Generator().manual_seed(seed)
    targets = torch.randn(frames, bins, channels, sources, generator=gen, dtype=dtype).abs()
    mix = torch.randn(frames, bins, channels, 2, generator=gen, dtype=dtype)
    # amp > scale_factor so the EM's rescaling by max|mix| / scale_factor is exercised.
    return {"targets": targets * amp / 2, "mix": mix * amp}


# --------------------------------------------------------------------------------------
# Complex helpers against torch's complex dtype
# --------------------------------------------------------------------------------------


def _cplx(x: torch.Tensor) -> torch.Tensor:
    return torch.view_as_complex(x.contiguous())


def test_complex_helpers_match_torch_complex():
    a = torch.randn(3, 4, 2, dtype=torch.float64)
    b = torch.randn(3, 4, 2, dtype=torch.float64)
    torch.testing.assert_close(_cplx(W.complex_mul(a, b)), _cplx(a) * _cplx(b))
    torch.testing.assert_close(_cplx(W.complex_conj(a)), _cplx(a).conj())
    torch.testing.assert_close(W.complex_abs2(a), _cplx(a).abs() ** 2)
    torch.testing.assert_close(_cplx(W.complex_inv(a)), 1 / _cplx(a))
    # broadcasting like torch.mul
    torch.testing.assert_close(_cplx(W.complex_mul(a[:, :1], b)), _cplx(a[:, :1]) * _cplx(b))


def test_complex_matmul_and_hermitian():
    a = torch.randn(5, 2, 3, 2, dtype=torch.float64)
    b = torch.randn(5, 3, 4, 2, dtype=torch.float64)
    torch.testing.assert_close(_cplx(W.complex_matmul(a, b)), _cplx(a) @ _cplx(b))
    torch.testing.assert_close(_cplx(W.complex_hermitian(a)), _cplx(a).mH)


@pytest.mark.parametrize("size", [1, 2])
def test_complex_inverse_matrix(size):
    m = torch.randn(6, size, size, 2, dtype=torch.float64)
    torch.testing.assert_close(_cplx(W.complex_inverse_matrix(m)), torch.linalg.inv(_cplx(m)))


def test_complex_inverse_matrix_rejects_bad_shapes():
    with pytest.raises(ValueError):
        W.complex_inverse_matrix(torch.randn(4, 3, 3, 2))
    with pytest.raises(ValueError):
        W.complex_inverse_matrix(torch.randn(4, 2, 1, 2))


# --------------------------------------------------------------------------------------
# Phase without atan2
# --------------------------------------------------------------------------------------


def test_unit_phasor_matches_atan2():
    z = torch.randn(1000, 2, dtype=torch.float64)
    z[:10, 0] = 0  # on the axes
    z[10:20, 1] = 0
    angle = torch.atan2(z[..., 1], z[..., 0])
    torch.testing.assert_close(W.unit_phasor(z), torch.stack([angle.cos(), angle.sin()], -1))


def test_unit_phasor_zero_tiny_and_huge():
    z = torch.tensor(
        [[0.0, 0.0], [-0.0, 0.0], [1e-40, -1e-40], [0.0, 1e-45], [3e38, 3e38], [-2.0, 0.0]],
        dtype=torch.float32,
    )
    s = 2**-0.5
    expected = torch.tensor([[1.0, 0.0], [1.0, 0.0], [s, -s], [0.0, 1.0], [s, s], [-1.0, 0.0]])
    out = W.unit_phasor(z)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("iterations", [0, 1])
def test_zero_mixture_bins_get_phase_zero(iterations):
    case = _random_case(4, 5, 2, 3, seed=3)
    mix, targets = case["mix"], case["targets"]
    mix[1, 2] = 0  # both channels of one bin
    mix[3, :, 1] = 0  # a whole frame of one channel
    mix_before = mix.clone()
    y = W.wiener(targets, mix, iterations=iterations)
    assert torch.equal(mix, mix_before), "the mixture must not be modified"
    assert torch.isfinite(y).all()
    if iterations == 0:
        torch.testing.assert_close(y[1, 2, :, 0], targets[1, 2], rtol=0, atol=0)
        torch.testing.assert_close(y[1, 2, :, 1], torch.zeros_like(targets[1, 2]))
        torch.testing.assert_close(y[3, :, 1, 0], targets[3, :, 1], rtol=0, atol=0)
        torch.testing.assert_close(y[3, :, 1, 1], torch.zeros_like(targets[3, :, 1]))


# --------------------------------------------------------------------------------------
# Parity with open-unmix's wiener
# --------------------------------------------------------------------------------------

GRID = list(itertools.product([0, 1, 2], [False, True], [False, True]))
# (name, frames, bins, channels, sources, dtype, iterations, softmask, residual)
CASES = [
    (f"it{it}-soft{int(sm)}-res{int(res)}", 9, 6, 2, 3, torch.float32, it, sm, res)
    for it, sm, res in GRID
]
CASES += [
    ("mono-it2-res1", 7, 5, 1, 2, torch.float32, 2, False, True),
    ("mono-it1-soft1", 7, 5, 1, 2, torch.float32, 1, True, False),
    ("f64-it2-res1", 8, 5, 2, 4, torch.float64, 2, False, True),
    ("f64-it3-soft1", 8, 5, 2, 4, torch.float64, 3, True, False),
]


@pytest.fixture(scope="module")
def openunmix_results(tmp_path_factory):
    """Runs open-unmix's ``wiener`` once on every case in CASES."""
    _require_oracle()
    workdir = tmp_path_factory.mktemp("wiener_openunmix")
    inputs = {}
    for seed, (name, frames, bins, channels, sources, dtype, it, sm, res) in enumerate(CASES):
        case = _random_case(frames, bins, channels, sources, seed=seed, dtype=dtype)
        inputs[name] = dict(case, iterations=it, softmask=sm, residual=res)
    torch.save(inputs, workdir / "in.pt")
    _oracle.run(
        f"""
        import torch
        from openunmix.filtering import wiener
        cases = torch.load({str(workdir / "in.pt")!r})
        out = {{}}
        for name, c in cases.items():
            out[name] = wiener(c["targets"].clone(), c["mix"].clone(), c["iterations"],
                               softmask=c["softmask"], residual=c["residual"])
        torch.save(out, {str(workdir / "out.pt")!r})
    """,
        cwd=workdir,
    )
    return inputs, _oracle.load_result(workdir / "out.pt")


@pytest.mark.parametrize("name", [case[0] for case in CASES])
def test_wiener_matches_openunmix(openunmix_results, name):
    inputs, outputs = openunmix_results
    case = inputs[name]
    ours = W.wiener(
        case["targets"],
        case["mix"],
        case["iterations"],
        softmask=case["softmask"],
        residual=case["residual"],
    )
    _close(ours, outputs[name], tol=TOL_F64 if case["mix"].dtype == torch.float64 else TOL)


# --------------------------------------------------------------------------------------
# Parity of apply_wiener with upstream HTDemucs._wiener
# --------------------------------------------------------------------------------------

# (niters, residual, batch, sources, channels, bins, frames)
DEMUCS_CASES = [(n, r, 2, 2, 2, 4, 13) for n in (0, 1, 2) for r in (False, True)]
DEMUCS_CASES += [(1, True, 1, 3, 2, 3, 305)]  # two windows (300 + 5 frames)


def _demucs_name(case) -> str:
    return "n{}-res{}-B{}S{}C{}F{}T{}".format(case[0], int(case[1]), *case[2:])


@pytest.fixture(scope="module")
def demucs_results(tmp_path_factory):
    """Runs upstream ``HTDemucs._wiener`` on a tiny cac=False model for every case."""
    _require_oracle()
    workdir = tmp_path_factory.mktemp("wiener_htdemucs")
    inputs = {}
    gen = torch.Generator().manual_seed(1234)
    for case in DEMUCS_CASES:
        niters, residual, batch, sources, channels, bins, frames = case
        mag = torch.rand(batch, sources, channels, bins, frames, generator=gen) * 30
        mix = torch.randn(batch, channels, bins, frames, 2, generator=gen) * 40
        inputs[_demucs_name(case)] = {
            "niters": niters,
            "residual": residual,
            "mag": mag,
            "mix": mix,
        }
    torch.save(inputs, workdir / "in.pt")
    _oracle.run(
        f"""
        import torch
        from demucs.htdemucs import HTDemucs
        cases = torch.load({str(workdir / "in.pt")!r})
        out = {{}}
        for name, c in cases.items():
            n, sources = c["niters"], c["mag"].shape[1]
            model = HTDemucs([f"s{{i}}" for i in range(sources)], cac=False,
                             wiener_iters=n, end_iters=n, wiener_residual=c["residual"],
                             channels=4, depth=2, nfft=256, t_layers=1)
            mix = torch.view_as_complex(c["mix"].clone())
            with torch.no_grad():
                out[name] = torch.view_as_real(model._wiener(c["mag"], mix, n))
        torch.save(out, {str(workdir / "out.pt")!r})
    """,
        cwd=workdir,
    )
    return inputs, _oracle.load_result(workdir / "out.pt")


@pytest.mark.parametrize("name", [_demucs_name(case) for case in DEMUCS_CASES])
def test_apply_wiener_matches_htdemucs(demucs_results, name):
    inputs, outputs = demucs_results
    case = inputs[name]
    ours = W.apply_wiener(case["mag"], case["mix"], case["niters"], case["residual"])
    _close(ours, outputs[name])


def test_apply_wiener_windows_are_independent():
    mag = torch.rand(1, 2, 2, 3, 10)
    mix = torch.randn(1, 2, 3, 10, 2)
    out = W.apply_wiener(mag, mix, 1, residual=True, window=4)
    assert out.shape == (1, 2, 2, 3, 10, 2)
    second = W.apply_wiener(mag[..., 4:8], mix[..., 4:8, :], 1, residual=True, window=4)
    torch.testing.assert_close(out[..., 4:8, :], second)


# --------------------------------------------------------------------------------------
# Argument checking
# --------------------------------------------------------------------------------------


def test_wiener_rejects_bad_arguments():
    targets = torch.rand(3, 4, 2, 2)
    mix = torch.randn(3, 4, 2, 2)
    with pytest.raises(ValueError):
        W.wiener(targets, torch.view_as_complex(mix))
    with pytest.raises(ValueError):
        W.wiener(targets, mix[..., :1])
    with pytest.raises(ValueError):
        W.wiener(targets[:2], mix)
    with pytest.raises(ValueError):
        W.wiener(targets, mix, iterations=-1)
    with pytest.raises(ValueError):
        W.wiener(targets, mix, scale_factor=0.0)
    with pytest.raises(ValueError):
        W.wiener(torch.rand(3, 4, 3, 2), torch.randn(3, 4, 3, 2), iterations=1)
    # mono targets broadcast over the mixture channels; 3 channels are fine without EM
    assert W.wiener(targets[:, :, :1], mix, iterations=0).shape == (3, 4, 2, 2, 2)
    assert W.wiener(torch.rand(3, 4, 3, 2), torch.randn(3, 4, 3, 2), iterations=0).shape == (
        3,
        4,
        3,
        2,
        2,
    )


def test_apply_wiener_rejects_bad_arguments():
    mag = torch.rand(1, 2, 2, 3, 5)
    mix = torch.randn(1, 2, 3, 5, 2)
    with pytest.raises(ValueError):
        W.apply_wiener(mag, torch.view_as_complex(mix), 1)
    with pytest.raises(ValueError):
        W.apply_wiener(mag, mix[..., :4, :], 1)
    with pytest.raises(ValueError):
        W.apply_wiener(mag, mix, 1, window=0)
    with pytest.raises(ValueError):
        W.apply_wiener(mag, mix, -1)


# --------------------------------------------------------------------------------------
# ONNX export
# --------------------------------------------------------------------------------------


class _Filter(torch.nn.Module):
    def __init__(self, iterations: int, residual: bool) -> None:
        super().__init__()
        self.iterations = iterations
        self.residual = residual

    def forward(self, targets: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
        return W.wiener(targets, mix, self.iterations, residual=self.residual)


class _DemucsFilter(torch.nn.Module):
    def forward(self, mag: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
        return W.apply_wiener(mag, mix, 1, residual=True, window=4)


def _export_and_run(model: torch.nn.Module, args: tuple, path) -> torch.Tensor:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.onnx.export(
            model,
            args,
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["a", "b"],
            output_names=["y"],
        )
    ours = [w for w in caught if w.filename.endswith(os.path.join("demucs", "wiener.py"))]
    assert not ours, [str(w.message) for w in ours]
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert not ops & {"Atan", "Atan2"}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"a": args[0].numpy(), "b": args[1].numpy()})
    return torch.from_numpy(got)


@pytest.mark.slow
@pytest.mark.parametrize("iterations", [0, 1])
def test_wiener_onnx_export(tmp_path, iterations):
    case = _random_case(6, 5, 2, 3, seed=7)
    mix = case["mix"]
    mix[2, 1] = 0  # zero bins must give phase 0 in the exported graph too
    args = (case["targets"], mix)
    model = _Filter(iterations, residual=True)
    got = _export_and_run(model, args, tmp_path / "wiener.onnx")
    _close(got, model(*args))
    if iterations == 0:
        torch.testing.assert_close(got[2, 1, :, 0, :3], args[0][2, 1])
        torch.testing.assert_close(got[2, 1, :, 1, :3], torch.zeros(2, 3))


@pytest.mark.slow
def test_apply_wiener_onnx_export(tmp_path):
    args = (torch.rand(1, 2, 2, 3, 10) * 30, torch.randn(1, 2, 3, 10, 2) * 40)
    model = _DemucsFilter()
    _close(_export_and_run(model, args, tmp_path / "apply.onnx"), model(*args))


def test_atan2_matches_torch_and_keeps_inputs():
    gen = torch.Generator().manual_seed(3)
    y = torch.randn(500, generator=gen, dtype=torch.float64)
    x = torch.randn(500, generator=gen, dtype=torch.float64)
    axes = torch.tensor([0.0, 1.0, -1.0, 0.0, 0.0, 2.0, -3.0], dtype=torch.float64)
    y = torch.cat([y, axes])
    x = torch.cat([x, torch.tensor([0.0, 0.0, 0.0, 1.0, -1.0, -0.5, 0.0], dtype=torch.float64)])
    x_before, y_before = x.clone(), y.clone()
    out = W.atan2(y, x)
    assert torch.equal(x, x_before) and torch.equal(y, y_before)
    assert (out - torch.atan2(y, x)).abs().max().item() < 1e-12
    assert W.atan2(torch.tensor(0.0), torch.tensor(0.0)).item() == 0.0


@pytest.mark.parametrize("batch_size", [1, 7, 200, None])
def test_expectation_maximization_batch_size_does_not_change_result(batch_size):
    case = _random_case(frames=23, bins=5, channels=2, sources=3, seed=4, dtype=torch.float64)
    y = W.wiener(case["targets"], case["mix"], iterations=0)
    ref = W.expectation_maximization(y, case["mix"], iterations=2, batch_size=None)
    out = W.expectation_maximization(y, case["mix"], iterations=2, batch_size=batch_size)
    for a, b in zip(out, ref):
        assert (a - b).abs().max().item() < 1e-12
    with pytest.raises(ValueError, match="batch_size"):
        W.expectation_maximization(y, case["mix"], batch_size=0)
