"""Frame-level pseudo-labels for HuBERT-style masked prediction: k-means clusters of MFCCs (speech)
or of log-mel plus chroma (music), one label per encoder frame (20 ms hop, 25 ms receptive field)."""
from __future__ import annotations

import math

import torch

HOP, FIELD = 320, 400  # the CNN front end's stride and receptive field in samples at 16 kHz


def frame_spectra(audio: torch.Tensor, n_fft: int) -> torch.Tensor:
    """(clips, frames, n_fft // 2 + 1) power spectra centred on the encoder's frames: frame i covers
    samples [320i, 320i + 400), so a window of n_fft samples is centred on 320i + 200."""
    pad = n_fft // 2 - FIELD // 2
    if pad > 0:
        audio = torch.nn.functional.pad(audio, (pad, pad))
    elif pad < 0:
        raise ValueError("n_fft must cover the frame's receptive field")
    spectrum = torch.stft(audio, n_fft, HOP, window=torch.hann_window(n_fft, device=audio.device), center=False,
                          return_complex=True)
    return spectrum.abs().pow(2).transpose(1, 2)


def mel_filters(n_fft: int, bands: int, sample_rate: int, low: float, high: float, device=None) -> torch.Tensor:
    """(n_fft // 2 + 1, bands) triangular HTK mel filterbank."""
    mel = lambda f: 2595 * math.log10(1 + f / 700)  # noqa: E731
    edges = torch.linspace(mel(low), mel(high), bands + 2, device=device)
    hz = 700 * (10 ** (edges / 2595) - 1)
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, device=device)
    rising = (freqs[:, None] - hz[None, :-2]) / (hz[1:-1] - hz[:-2])
    falling = (hz[None, 2:] - freqs[:, None]) / (hz[2:] - hz[1:-1])
    return torch.clamp(torch.minimum(rising, falling), min=0)


def semitone_filters(n_fft: int, sample_rate: int, low_midi: int, high_midi: int, device=None) -> torch.Tensor:
    """(n_fft // 2 + 1, high_midi - low_midi + 1) map of FFT bins to semitones (a constant-Q-like
    spectrum from an STFT), each bin's weight split between its two nearest semitones."""
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, device=device)
    count = high_midi - low_midi + 1
    weights = torch.zeros(len(freqs), count + 1, device=device)
    low_hz, high_hz = (440 * 2 ** ((m - 69) / 12) for m in (low_midi - 0.5, high_midi + 0.5))
    inside = (freqs >= low_hz) & (freqs <= high_hz)
    midi = (69 + 12 * torch.log2(freqs[inside] / 440) - low_midi).clamp(0, count - 1)
    below = torch.floor(midi)
    rows = torch.nonzero(inside).squeeze(1)
    weights.index_put_((rows, below.long()), 1 - (midi - below), accumulate=True)
    weights.index_put_((rows, below.long() + 1), midi - below, accumulate=True)
    return weights[:, :count]


def chroma_filters(n_fft: int, sample_rate: int, low_midi: int = 33, high_midi: int = 108, device=None) -> torch.Tensor:
    """(n_fft // 2 + 1, 12) map of FFT bins to pitch classes (C = 0): the semitone map folded by octave."""
    semitones = semitone_filters(n_fft, sample_rate, low_midi, high_midi, device)
    classes = (torch.arange(low_midi, high_midi + 1, device=device) % 12)
    return torch.zeros(semitones.shape[0], 12, device=device).index_add_(1, classes, semitones)


def log_compress(energy: torch.Tensor, top_db: float = 60.0) -> torch.Tensor:
    """Natural log of band energies, floored `top_db` under each clip's peak (so the noise floor of quiet
    bands does not dominate the clusters)."""
    peak = energy.amax(dim=(1, 2), keepdim=True)
    return torch.log(torch.maximum(energy, peak * 10 ** (-top_db / 10)) + 1e-10)


def _deltas(x: torch.Tensor) -> torch.Tensor:
    padded = torch.nn.functional.pad(x.transpose(1, 2), (1, 1), mode="replicate").transpose(1, 2)
    return (padded[:, 2:] - padded[:, :-2]) / 2


def speech_features(audio: torch.Tensor, sample_rate: int = 16000) -> torch.Tensor:
    """(clips, frames, 39): 13 MFCCs with their first and second differences."""
    power = frame_spectra(audio, 512)
    log_mel = log_compress(power @ mel_filters(512, 40, sample_rate, 20, sample_rate / 2, audio.device))
    n = torch.arange(40, device=audio.device)
    dct = torch.cos(math.pi / 40 * (n[:, None] + 0.5) * torch.arange(13, device=audio.device)[None, :])
    mfcc = log_mel @ dct
    delta = _deltas(mfcc)
    return torch.cat([mfcc, delta, _deltas(delta)], dim=-1)


def music_features(audio: torch.Tensor, sample_rate: int = 16000) -> torch.Tensor:
    """(clips, frames, 88): 64 log-mel bands and a 12-bin chroma, twice (double weight once standardised)."""
    power = frame_spectra(audio, 2048)
    log_mel = log_compress(power @ mel_filters(2048, 64, sample_rate, 30, 8000, audio.device))
    chroma = power @ chroma_filters(2048, sample_rate, device=audio.device)
    chroma = torch.log(chroma / (chroma.sum(-1, keepdim=True) + 1e-8) + 1e-3)
    return torch.cat([log_mel, chroma, chroma], dim=-1)


def pitch_distributions(audio: torch.Tensor, sample_rate: int = 16000, floor_db: float = 30.0) -> list[torch.Tensor]:
    """Per-frame distributions of energy over the 72 semitones C2..B7 and over the 12 pitch classes
    (clips, frames, 72 | 12): which notes sound, whatever their loudness (MERT's musical target, here
    as distributions). Frames more than `floor_db` under the clip's loudest are all zero (no target)."""
    power = frame_spectra(audio, 4096)
    semitones = power @ semitone_filters(4096, sample_rate, 36, 107, audio.device)
    chroma = power @ chroma_filters(4096, sample_rate, 36, 107, audio.device)
    total = semitones.sum(-1, keepdim=True)
    sounding = total > total.amax(1, keepdim=True) * 10 ** (-floor_db / 10)
    return [torch.where(sounding, energy / (energy.sum(-1, keepdim=True) + 1e-12), 0.0) for energy in (semitones, chroma)]


def kmeans(points: torch.Tensor, k: int, *, iterations: int = 30, seed: int = 0, sample: int = 50_000) -> torch.Tensor:
    """(k, dims) centroids: k-means++ seeding on a sample of the points, then Lloyd iterations on all."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    pick = torch.randperm(len(points), generator=generator)[:sample].to(points.device)
    subset = points[pick]
    centroids = [subset[int(torch.randint(len(subset), (1,), generator=generator))]]
    nearest = torch.full((len(subset),), float("inf"), device=points.device)
    for _ in range(k - 1):
        nearest = torch.minimum(nearest, (subset - centroids[-1]).pow(2).sum(1))
        choice = torch.multinomial((nearest / nearest.sum()).cpu(), 1, generator=generator)
        centroids.append(subset[int(choice)])
    centroids = torch.stack(centroids)
    for _ in range(iterations):
        labels = assign(points, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, labels, points)
        counts = torch.bincount(labels, minlength=k).unsqueeze(1)
        centroids = torch.where(counts > 0, sums / counts.clamp_min(1), centroids)  # an empty cluster stays put
    return centroids


def assign(points: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid for every point."""
    return torch.cdist(points, centroids).argmin(1)


def cluster_labels(features: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """(clips, frames) k-means labels of standardised frame features."""
    flat = features.reshape(-1, features.shape[-1])
    flat = (flat - flat.mean(0)) / (flat.std(0) + 1e-5)
    return assign(flat, kmeans(flat, k, seed=seed)).reshape(features.shape[:2])
