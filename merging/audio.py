"""Robust audio input and output: any readable file or array in, float32 mono at the rate asked for out.

Refused with a one-line `MergeError`: a missing or empty file, anything libsndfile cannot decode,
a sample rate outside 1–384 kHz, NaN/Inf or absurdly large samples, and silence. A clip longer than
`max_seconds` is not refused: it is trimmed to its first `max_seconds` and `info["warnings"]` says so
(the app shows the warnings). Only that much is ever decoded, mixed to mono a block at a time, so a
small compressed upload cannot expand into gigabytes of samples.
"""
from __future__ import annotations

import io
import struct
import zlib
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from .state import MergeError

SILENCE_PEAK = 1e-4  # about -80 dBFS: quieter than any real recording's noise floor
OGG_QUALITY = 0.5  # libsndfile's Vorbis/Opus compression level for save_audio (0 best quality .. 1 smallest)
FORMATS = {".wav": ("WAV", "PCM_16"), ".flac": ("FLAC", "PCM_16"), ".ogg": ("OGG", "VORBIS")}
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
# What an input may declare: a header outside this range is broken or hostile (a 4 kB WAV claiming
# 2 MHz would otherwise cost gigabytes of resampling filter).
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1000, 384000
MAX_PEAK = 2.0**20  # float audio is nominally within ±1; int-scaled floats (±32768) still pass
# Cap on the terms of the polyphase ratio up/down: its filter has about 20·max(up, down) taps.
MAX_RESAMPLE_TERMS = 1000
READ_BLOCK_SAMPLES = 2**20  # samples (frames × channels) decoded at a time


def resample(audio: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Polyphase resampling to target_sr along the last axis: float32, ceil(n·target_sr/orig_sr) samples.

    The ratio is exact when target_sr/orig_sr reduces to terms up to MAX_RESAMPLE_TERMS (every common
    rate does: 44.1 kHz -> 16 kHz is 160/441); otherwise the nearest such ratio is used, under 0.1%
    (2 cents) off, so that an odd rate cannot make the filter huge."""
    audio = np.asarray(audio, dtype=np.float32)
    if orig_sr == target_sr:
        return audio
    if orig_sr <= 0 or target_sr <= 0:
        raise MergeError(f"sample rates must be positive, got {orig_sr} and {target_sr}")
    up, down = _resample_ratio(int(orig_sr), int(target_sr))
    out = resample_poly(audio, up, down, axis=-1).astype(np.float32)
    return _fit_length(out, -(-audio.shape[-1] * int(target_sr) // int(orig_sr)))


def _resample_ratio(orig_sr: int, target_sr: int) -> tuple[int, int]:
    ratio = Fraction(target_sr, orig_sr)
    if not Fraction(1, MAX_RESAMPLE_TERMS) <= ratio <= MAX_RESAMPLE_TERMS:
        raise MergeError(f"cannot resample {orig_sr} Hz to {target_sr} Hz: the ratio is beyond {MAX_RESAMPLE_TERMS}")
    if max(ratio.numerator, ratio.denominator) > MAX_RESAMPLE_TERMS:  # both terms stay within the cap
        ratio = ratio.limit_denominator(MAX_RESAMPLE_TERMS) if ratio < 1 else 1 / (1 / ratio).limit_denominator(MAX_RESAMPLE_TERMS)
    return ratio.numerator, ratio.denominator


def _fit_length(audio: np.ndarray, length: int) -> np.ndarray:
    """Cut or zero-pad the last axis to `length` (an approximated ratio may be a few samples off)."""
    if audio.shape[-1] >= length:
        return audio[..., :length]
    return np.pad(audio, [(0, 0)] * (audio.ndim - 1) + [(0, length - audio.shape[-1])])


def check_sample_rate(sample_rate: int, name: str = "audio") -> None:
    """MergeError unless the rate is within MIN_SAMPLE_RATE..MAX_SAMPLE_RATE."""
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise MergeError(f"{name}: sample rate {sample_rate} Hz is outside {MIN_SAMPLE_RATE}–{MAX_SAMPLE_RATE} Hz")


def _frame_limit(max_seconds: float, sample_rate: int) -> int:
    return int(max_seconds * sample_rate)


def _trimmed_warning(name: str, seconds: float, max_seconds: float) -> str:
    return f"{name}: {seconds:.1f} s is longer than {max_seconds:g} s; only the first {max_seconds:g} s are used"


def prepare_audio(audio: np.ndarray, sample_rate: int, target_sr: int, *, max_seconds: float = 30.0,
                  name: str = "audio") -> tuple[np.ndarray, dict]:
    """An array as libraries hand it over (int or float, (samples,) or (samples, channels)) checked
    and converted to float32 mono at target_sr. Returns (audio, info); see `load_audio`."""
    audio = np.asarray(audio)
    info = {"name": name, "sample_rate": int(sample_rate), "channels": 1 if audio.ndim == 1 else int(audio.shape[-1]),
            "seconds": len(audio) / sample_rate if sample_rate > 0 else 0.0, "warnings": []}
    check_sample_rate(sample_rate, name)
    if audio.ndim not in (1, 2) or audio.size == 0:
        raise MergeError(f"{name}: holds no samples" if audio.size == 0 else f"{name}: expected (samples,) or (samples, channels), got shape {audio.shape}")
    limit = _frame_limit(max_seconds, sample_rate)
    if len(audio) > limit:
        info["warnings"].append(_trimmed_warning(name, info["seconds"], max_seconds))
        audio = audio[:limit]
    if np.issubdtype(audio.dtype, np.integer):
        full_scale = float(2 ** (8 * audio.dtype.itemsize - 1))
        offset = full_scale if np.issubdtype(audio.dtype, np.unsignedinteger) else 0.0
        audio = (audio.astype(np.float64) - offset) / full_scale
    elif not np.issubdtype(audio.dtype, np.floating):
        raise MergeError(f"{name}: samples must be numbers, got dtype {audio.dtype}")
    if not np.isfinite(audio).all():
        raise MergeError(f"{name}: contains NaN or Inf samples")
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    if peak > MAX_PEAK:
        raise MergeError(f"{name}: has samples as large as {peak:.3g}; audio should be near ±1 (at most {MAX_PEAK:g})")
    if peak < SILENCE_PEAK:
        raise MergeError(f"{name}: is silent (every sample is below {SILENCE_PEAK:g})")
    return resample(audio.astype(np.float32), sample_rate, target_sr), info


def load_audio(source: str | Path | bytes, target_sr: int, *, max_seconds: float = 30.0) -> tuple[np.ndarray, dict]:
    """Decode a file (path) or its bytes (WAV/FLAC/OGG/MP3, any bit depth, any channel count, any rate)
    into float32 mono at target_sr. Returns (audio, info): info holds the file's own sample_rate,
    channels, seconds, format and subtype, and `warnings` (a clip over max_seconds is trimmed)."""
    if isinstance(source, (bytes, bytearray)):
        name, stream = "audio data", io.BytesIO(bytes(source))
        empty = not source
    else:
        path = Path(source)
        name = path.name
        if not path.is_file():
            raise MergeError(f"audio file not found: {path}")
        empty = path.stat().st_size == 0
        stream = None if empty else path.open("rb")
    if empty:
        raise MergeError(f"{name}: file is empty (0 bytes)")
    with stream:
        samples, sample_rate, frames, file_info = _decode(stream, name, max_seconds)
    if len(samples) == 0:
        raise MergeError(f"{name}: holds no samples")
    audio, info = prepare_audio(samples, sample_rate, target_sr, max_seconds=max_seconds, name=name)
    info.update(file_info, seconds=frames / sample_rate)
    if frames > len(samples):
        info["warnings"].append(_trimmed_warning(name, info["seconds"], max_seconds))
    return audio, info


def _decode(stream, name: str, max_seconds: float) -> tuple[np.ndarray, int, int, dict]:
    """(the first max_seconds mixed to mono, the rate, the file's length in frames, format details)."""
    try:
        with sf.SoundFile(stream) as handle:
            check_sample_rate(handle.samplerate, name)
            samples = _read_mono(handle, _frame_limit(max_seconds, handle.samplerate))
            info = {"format": handle.format, "subtype": handle.subtype, "channels": handle.channels}
            return samples, handle.samplerate, max(handle.frames, len(samples)), info
    except MergeError:
        raise
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as error:
        reason = getattr(error, "error_string", None) or str(error)
        raise MergeError(f"not a readable audio file: {name} ({reason})") from None


def _read_mono(handle: sf.SoundFile, max_frames: int) -> np.ndarray:
    """Up to max_frames frames, each block mixed down to mono as it is read: a file with many
    channels never sits in memory whole."""
    block = max(1, READ_BLOCK_SAMPLES // handle.channels)
    parts, count = [], 0
    while count < max_frames:
        data = handle.read(frames=min(block, max_frames - count), dtype="float32", always_2d=True)
        if len(data) == 0:
            break
        with np.errstate(over="ignore", invalid="ignore"):  # a non-finite mix is refused afterwards
            parts.append(data.mean(axis=1))
        count += len(data)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def save_audio(path: str | Path, audio: np.ndarray, sample_rate: int, *, subtype: str | None = None,
               compression_level: float = OGG_QUALITY) -> Path:
    """Write mono or (samples, channels) audio; the format follows the extension (.ogg, .flac, .wav).
    subtype overrides the default encoding (.ogg: "VORBIS" or "OPUS"; .wav: "PCM_16", "PCM_24", "FLOAT"...);
    compression_level (0 best quality .. 1 smallest) applies to Vorbis and Opus."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise MergeError(f"cannot save '{path.name}': use one of {', '.join(FORMATS)}")
    audio = np.asarray(audio, dtype=np.float32)
    if not np.isfinite(audio).all():
        raise MergeError(f"cannot save '{path.name}': audio contains NaN or Inf samples")
    file_format, default_subtype = FORMATS[path.suffix.lower()]
    subtype = subtype or default_subtype
    if subtype == "OPUS" and sample_rate not in OPUS_RATES:
        raise MergeError(f"cannot save '{path.name}' as Opus at {sample_rate} Hz: Opus takes {OPUS_RATES}")
    extra = {"compression_level": compression_level} if file_format == "OGG" else {}
    buffer = io.BytesIO()
    try:
        sf.write(buffer, np.clip(audio, -1.0, 1.0), sample_rate, subtype=subtype, format=file_format, **extra)
    except (sf.LibsndfileError, ValueError, TypeError) as error:
        raise MergeError(f"cannot save '{path.name}' as {file_format}/{subtype}: {error}") from None
    data = buffer.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_fixed_ogg_serial(data) if file_format == "OGG" else data)
    return path


_REVERSED_BITS = bytes(int(f"{b:08b}"[::-1], 2) for b in range(256))


def _ogg_crc(page: bytes) -> int:
    """Ogg's CRC-32 (polynomial 0x04C11DB7, not reflected, init 0), via zlib's reflected one on bit-reversed bytes."""
    raw = zlib.crc32(page.translate(_REVERSED_BITS), 0xFFFFFFFF) ^ 0xFFFFFFFF
    return int(f"{raw:032b}"[::-1], 2)


def _fixed_ogg_serial(data: bytes, serial: int = 0x6D6C6162) -> bytes:
    """libsndfile gives each Ogg stream a random serial number; a fixed one makes equal audio equal files."""
    out, pos = bytearray(data), 0
    while pos < len(out):
        if out[pos:pos + 4] != b"OggS":
            raise RuntimeError("libsndfile wrote an Ogg stream this code does not understand")
        segments = out[pos + 26]
        size = 27 + segments + sum(out[pos + 27:pos + 27 + segments])
        struct.pack_into("<II", out, pos + 14, serial, struct.unpack_from("<I", out, pos + 18)[0])
        struct.pack_into("<I", out, pos + 22, 0)
        struct.pack_into("<I", out, pos + 22, _ogg_crc(bytes(out[pos:pos + size])))
        pos += size
    return bytes(out)
