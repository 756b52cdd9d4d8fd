import numpy as np
import pytest
import soundfile as sf

from merging.audio import load_audio, prepare_audio, resample, save_audio
from merging.state import MergeError


def sine(freq=440.0, seconds=1.0, sr=16000, amplitude=0.5):
    return (amplitude * np.sin(2 * np.pi * freq * np.arange(int(seconds * sr)) / sr)).astype(np.float32)


def peak_frequency(audio, sr):
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return np.fft.rfftfreq(len(audio), 1 / sr)[spectrum.argmax()]


@pytest.mark.parametrize("sr", [8000, 22050, 44100, 48000, 16000])
@pytest.mark.parametrize("suffix,subtype", [(".wav", "PCM_U8"), (".wav", "PCM_16"), (".wav", "PCM_24"),
                                            (".wav", "FLOAT"), (".flac", "PCM_24"), (".ogg", "VORBIS"),
                                            (".mp3", "MPEG_LAYER_III")])
def test_formats_rates_and_depths_become_float32_mono_16k(tmp_path, sr, suffix, subtype):
    path = tmp_path / f"tone{suffix}"
    sf.write(path, sine(440, 1.0, sr), sr, subtype=subtype)
    audio, info = load_audio(path, 16000)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - 16000) <= 1
    assert info["sample_rate"] == sr and info["warnings"] == []
    assert abs(peak_frequency(audio, 16000) - 440) < 2
    assert 0.4 < np.abs(audio[1000:-1000]).max() < 0.6


def test_stereo_is_mixed_to_mono(tmp_path):
    left = sine(300, sr=44100)
    sf.write(tmp_path / "stereo.wav", np.stack([left, np.zeros_like(left)], axis=1), 44100, subtype="PCM_16")
    audio, info = load_audio(tmp_path / "stereo.wav", 16000)
    assert info["channels"] == 2
    assert np.abs(audio[1000:-1000]).max() == pytest.approx(0.25, abs=0.01)
    assert abs(peak_frequency(audio, 16000) - 300) < 2


def test_bytes_input_and_target_rate(tmp_path):
    sf.write(tmp_path / "a.flac", sine(1000, sr=16000), 16000)
    audio, info = load_audio((tmp_path / "a.flac").read_bytes(), 24000)
    assert len(audio) == 24000 and info["format"] == "FLAC"
    assert abs(peak_frequency(audio, 24000) - 1000) < 2


def test_resample_keeps_frequency_and_exact_length():
    out = resample(sine(523.25, 1.0, 22050), 22050, 16000)
    assert len(out) == 16000 and out.dtype == np.float32
    assert abs(peak_frequency(out, 16000) - 523.25) < 2
    same = sine()
    assert np.array_equal(resample(same, 16000, 16000), same)


def write_bytes(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_bad_inputs_are_refused_with_clear_messages(tmp_path):
    with pytest.raises(MergeError, match="audio file not found"):
        load_audio(tmp_path / "nope.wav", 16000)
    with pytest.raises(MergeError, match="file is empty"):
        load_audio(write_bytes(tmp_path, "empty.wav", b""), 16000)
    with pytest.raises(MergeError, match="not a readable audio file: notes.wav"):
        load_audio(write_bytes(tmp_path, "notes.wav", b"just some text, not audio\n" * 20), 16000)
    sf.write(tmp_path / "full.wav", sine(), 16000)
    truncated = (tmp_path / "full.wav").read_bytes()[:30]
    with pytest.raises(MergeError, match="not a readable audio file: cut.wav"):
        load_audio(write_bytes(tmp_path, "cut.wav", truncated), 16000)
    with pytest.raises(MergeError, match="not a readable audio file"):
        load_audio(b"\x00" * 1000, 16000)
    sf.write(tmp_path / "nothing.wav", np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(MergeError, match="holds no samples"):
        load_audio(tmp_path / "nothing.wav", 16000)


def test_nan_inf_and_silence_are_refused(tmp_path):
    for bad in (np.nan, np.inf):
        audio = sine()
        audio[100] = bad
        sf.write(tmp_path / "bad.wav", audio, 16000, subtype="FLOAT")
        with pytest.raises(MergeError, match="NaN or Inf"):
            load_audio(tmp_path / "bad.wav", 16000)
    sf.write(tmp_path / "quiet.wav", np.zeros(16000, dtype=np.float32), 16000)
    with pytest.raises(MergeError, match="silent"):
        load_audio(tmp_path / "quiet.wav", 16000)
    sf.write(tmp_path / "dither.wav", sine(amplitude=2e-5), 16000, subtype="FLOAT")
    with pytest.raises(MergeError, match="silent"):
        load_audio(tmp_path / "dither.wav", 16000)


def test_long_clip_is_trimmed_with_a_warning(tmp_path):
    sf.write(tmp_path / "long.wav", sine(seconds=3.0, sr=8000), 8000)
    audio, info = load_audio(tmp_path / "long.wav", 16000, max_seconds=1.5)
    assert len(audio) == 24000
    assert info["seconds"] == pytest.approx(3.0)
    assert len(info["warnings"]) == 1 and "longer than 1.5 s" in info["warnings"][0]


def test_prepare_audio_takes_int_and_channel_last_arrays():
    pcm = (sine(440, sr=48000) * 32767).astype(np.int16)
    audio, info = prepare_audio(np.stack([pcm, pcm], axis=1), 48000, 16000)
    assert len(audio) == 16000 and info["channels"] == 2
    assert np.abs(audio).max() == pytest.approx(0.5, abs=0.01)
    unsigned, _ = prepare_audio((sine(440) * 127 + 128).astype(np.uint8), 16000, 16000)
    assert np.abs(unsigned).max() == pytest.approx(0.5, abs=0.02)
    with pytest.raises(MergeError, match="sample rate"):
        prepare_audio(sine(), 0, 16000)
    with pytest.raises(MergeError, match="shape"):
        prepare_audio(np.ones((2, 2, 2)), 16000, 16000)


@pytest.mark.parametrize("suffix", [".wav", ".flac", ".ogg"])
def test_save_audio_round_trips(tmp_path, suffix):
    tone = sine(440)
    path = save_audio(tmp_path / f"sub/tone{suffix}", tone, 16000)
    audio, _ = load_audio(path, 16000)
    tolerance = 0.05 if suffix == ".ogg" else 1e-4
    assert np.abs(audio - tone).max() < tolerance


def test_save_audio_opus(tmp_path):
    tone = sine(440)
    path = save_audio(tmp_path / "tone.ogg", tone, 16000, subtype="OPUS", compression_level=0.95)
    audio, info = load_audio(path, 16000)
    assert info["subtype"] == "OPUS" and len(audio) == 16000
    assert np.abs(audio[1000:-1000] - tone[1000:-1000]).max() < 0.1
    with pytest.raises(MergeError, match="Opus takes"):
        save_audio(tmp_path / "tone.ogg", sine(sr=44100), 44100, subtype="OPUS")


@pytest.mark.parametrize("subtype", ["VORBIS", "OPUS"])
def test_save_audio_ogg_is_byte_reproducible_and_checks_input(tmp_path, subtype):
    noise = np.random.default_rng(0).uniform(-0.5, 0.5, 16000).astype(np.float32)
    first = save_audio(tmp_path / "a.ogg", noise, 16000, subtype=subtype).read_bytes()
    assert save_audio(tmp_path / "b.ogg", noise, 16000, subtype=subtype).read_bytes() == first
    with pytest.raises(MergeError, match="use one of"):
        save_audio(tmp_path / "a.mp4", noise, 16000)
    with pytest.raises(MergeError, match="NaN"):
        save_audio(tmp_path / "c.wav", np.full(10, np.nan), 16000)
