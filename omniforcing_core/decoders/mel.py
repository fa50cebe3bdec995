"""The log-mel spectrogram the LTX-2 audio VAE encodes, in plain torch (no torchaudio).

LTX-2's reference code (ltx-core ``audio_vae/ops.py`` ``AudioProcessor``, ComfyUI
``comfy/ldm/lightricks/vae/audio_vae.py`` ``AudioPreprocessor``) computes it with
``torchaudio.transforms.MelSpectrogram``: 16 kHz, n_fft = win = 1024, hop 160, a periodic
Hann window, centred frames with reflect padding, magnitude (power 1), 64 mel bands from
0 Hz to the Nyquist frequency on the Slaney mel scale with Slaney (unit-area) band
normalization, then ``log(max(mel, 1e-5))``. Each step is written out here.
"""

from __future__ import annotations

import math

import torch

LOG_FLOOR = 1e-5

# The Slaney (Auditory Toolbox) mel scale: linear below 1 kHz, logarithmic above.
_LINEAR_HZ_PER_MEL = 200.0 / 3.0
_BREAK_HZ = 1000.0
_BREAK_MEL = _BREAK_HZ / _LINEAR_HZ_PER_MEL  # 15
_LOG_STEP = math.log(6.4) / 27.0


def hz_to_mel(hz: torch.Tensor) -> torch.Tensor:
    """Frequencies in Hz -> Slaney mels."""
    linear = hz / _LINEAR_HZ_PER_MEL
    logarithmic = _BREAK_MEL + torch.log(hz.clamp(min=_BREAK_HZ) / _BREAK_HZ) / _LOG_STEP
    return torch.where(hz >= _BREAK_HZ, logarithmic, linear)


def mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    """Slaney mels -> Hz (``hz_to_mel`` undone)."""
    linear = mel * _LINEAR_HZ_PER_MEL
    logarithmic = _BREAK_HZ * torch.exp(_LOG_STEP * (mel.clamp(min=_BREAK_MEL) - _BREAK_MEL))
    return torch.where(mel >= _BREAK_MEL, logarithmic, linear)


def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0, f_max: float | None = None,
    *, device: torch.device | str | None = None,
) -> torch.Tensor:
    """Triangular mel filters [n_fft // 2 + 1, n_mels], Slaney-normalized to unit area in Hz.

    Band m rises from edge m to its peak at edge m + 1 and falls to edge m + 2, the
    n_mels + 2 edges evenly spaced in mels; the FFT bins sit at linspace(0, sr // 2).
    """
    f_max = sample_rate / 2.0 if f_max is None else f_max
    bins = torch.linspace(0.0, sample_rate // 2, n_fft // 2 + 1, dtype=torch.float64)
    edge_mels = torch.linspace(
        hz_to_mel(torch.tensor(float(f_min), dtype=torch.float64)).item(),
        hz_to_mel(torch.tensor(float(f_max), dtype=torch.float64)).item(),
        n_mels + 2, dtype=torch.float64,
    )
    edges = mel_to_hz(edge_mels)
    widths = edges[1:] - edges[:-1]
    offsets = edges[None, :] - bins[:, None]  # [bins, edges]
    rising = -offsets[:, :-2] / widths[:-1]
    falling = offsets[:, 2:] / widths[1:]
    triangles = torch.minimum(rising, falling).clamp(min=0.0)
    area_norm = 2.0 / (edges[2:] - edges[:-2])
    return (triangles * area_norm).to(device=device, dtype=torch.float32)


def log_mel_spectrogram(
    waveform: torch.Tensor, *, sample_rate: int, n_fft: int, hop_length: int, n_mels: int,
    f_min: float = 0.0, f_max: float | None = None,
) -> torch.Tensor:
    """Waveform [..., samples] -> log-mel [..., 1 + samples // hop_length, n_mels] (fp32).

    Frames are centred on multiples of the hop (reflect padding by n_fft // 2 at both
    ends), so the clip needs more than n_fft // 2 samples.
    """
    samples = waveform.shape[-1]
    if samples <= n_fft // 2:
        raise ValueError(
            f"a log-mel spectrogram with n_fft={n_fft} needs more than {n_fft // 2} samples, got {samples}"
        )
    flat = waveform.reshape(-1, samples).float()
    window = torch.hann_window(n_fft, periodic=True, device=flat.device)
    spectrum = torch.stft(
        flat, n_fft, hop_length=hop_length, win_length=n_fft, window=window, center=True,
        pad_mode="reflect", normalized=False, onesided=True, return_complex=True,
    ).abs()  # [N, bins, frames]
    filters = mel_filterbank(sample_rate, n_fft, n_mels, f_min, f_max, device=flat.device)
    mel = torch.einsum("nkt,km->ntm", spectrum, filters)
    return torch.log(mel.clamp(min=LOG_FLOOR)).reshape(*waveform.shape[:-1], mel.shape[1], n_mels)
