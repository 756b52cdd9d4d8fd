import shutil

import numpy as np
import pytest

from merging import synth
from merging.state import MergeError

try:
    synth.require_tools("espeak-ng", "fluidsynth")
    MISSING = None
except MergeError as error:
    MISSING = str(error)
needs_tools = pytest.mark.skipif(MISSING is not None, reason=f"synthesisers absent: {MISSING}")


def detected_pitch_class(audio: np.ndarray, family: str) -> str | None:
    """pyin's median pitch over voiced frames, as a pitch class; searched from an octave under the
    family's range (organ stops sound an octave low) to one above it."""
    import librosa

    low, high = synth.FAMILY_PROGRAMS[family][1]
    f0, voiced, _ = librosa.pyin(audio, sr=synth.SAMPLE_RATE, fmin=librosa.midi_to_hz(low - 13),
                                 fmax=librosa.midi_to_hz(high + 13), frame_length=2048)
    f0 = f0[voiced & np.isfinite(f0)]
    if len(f0) == 0:
        return None
    return synth.PITCH_CLASSES[int(round(np.median(librosa.hz_to_midi(f0)))) % 12]


def same(a: list[synth.Clip], b: list[synth.Clip]) -> bool:
    return all(np.array_equal(x.audio, y.audio) and x.labels == y.labels for x, y in zip(a, b, strict=True))


def test_label_sets():
    assert len(synth.KEYWORDS) >= 20 and len(set(synth.KEYWORDS)) == len(synth.KEYWORDS)
    assert len(synth.SPEAKERS) >= 8 and len(set(synth.SPEAKERS)) == len(synth.SPEAKERS)
    assert len(synth.INSTRUMENT_FAMILIES) >= 6 and set(synth.CHORD_FAMILIES) <= set(synth.INSTRUMENT_FAMILIES)
    assert len(synth.PITCH_CLASSES) == 12 and synth.CHORD_QUALITIES[:4] == ("major", "minor", "diminished", "augmented")
    for programs, (low, high) in synth.FAMILY_PROGRAMS.values():
        assert high - low >= 23 and all(0 <= p < 128 for p in programs)


def test_balanced_schedule_holds_every_label_once_per_block():
    picks = [synth._balanced(synth.KEYWORDS, 7, 0, i) for i in range(3 * len(synth.KEYWORDS))]
    assert all(picks.count(word) == 3 for word in synth.KEYWORDS)
    assert picks != [synth._balanced(synth.KEYWORDS, 8, 0, i) for i in range(len(picks))]


def test_midi_file_structure():
    midi = synth._midi(5, [(0.0, 0.5, 60, 100), (0.25, 0.5, 64, 90)], 1.0)
    assert midi[:4] == b"MThd" and midi[14:18] == b"MTrk" and midi.endswith(b"\xff\x2f\x00")
    assert bytes([0xC0, 5]) in midi and bytes([0x90, 64, 90]) in midi and bytes([0xB0, 120, 0]) in midi


def test_missing_tools_name_their_debian_package(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda tool: None)
    with pytest.raises(MergeError, match=r"apt-get install espeak-ng.*apt-get install fluidsynth"):
        synth.require_tools("espeak-ng", "fluidsynth")


def test_unknown_labels_are_refused_before_rendering():
    with pytest.raises(MergeError, match="unknown speaker 'en-xx'"):
        synth.speech_clip(0, speaker="en-xx")
    with pytest.raises(MergeError, match="unknown keyword"):
        synth.speech_clip(0, keyword="banana")
    with pytest.raises(MergeError, match="unknown instrument family 'bass'"):
        synth.music_clip(0, kind="chord", family="bass")
    with pytest.raises(MergeError, match="unknown chord quality"):
        synth.music_clip(0, kind="chord", chord_quality="sus9")


@needs_tools
def test_short_clips_still_hold_the_whole_word_or_its_start():
    clip = synth.speech_clip(0, duration=0.25, keyword="seven")
    assert clip.audio.shape == (4000,) and clip.labels["keyword"] == "seven"


@needs_tools
def test_speech_is_deterministic_and_worker_independent():
    one = synth.speech_clips(4, 3, workers=1, progress=False)
    assert same(one, synth.speech_clips(4, 3, workers=2, progress=False))
    other = synth.speech_clips(4, 4, workers=2, progress=False)
    assert not any(np.array_equal(a.audio, b.audio) for a, b in zip(one, other))
    for clip in one:
        assert clip.audio.dtype == np.float32 and clip.audio.shape == (16000,)
        assert np.abs(clip.audio).max() == pytest.approx(synth.PEAK, abs=1e-6)
        assert clip.labels["domain"] == "speech"
        assert clip.labels["keyword"] in synth.KEYWORDS and clip.labels["speaker"] in synth.SPEAKERS


@needs_tools
def test_music_is_deterministic_and_labelled():
    one = synth.music_clips(6, 3, duration=1.5, workers=1, progress=False)
    assert same(one, synth.music_clips(6, 3, duration=1.5, workers=2, progress=False))
    assert not np.array_equal(one[0].audio, synth.music_clips(1, 4, progress=False)[0].audio)
    assert [clip.labels["kind"] for clip in one] == ["note", "chord", "phrase"] * 2
    for clip in one:
        assert clip.audio.dtype == np.float32 and clip.audio.shape == (24000,)
        assert clip.labels["instrument_family"] in synth.INSTRUMENT_FAMILIES
        assert clip.labels["pitch_class"] in synth.PITCH_CLASSES
        assert ("chord_quality" in clip.labels) == (clip.labels["kind"] == "chord")
        if clip.labels["kind"] == "chord":
            assert clip.labels["chord_quality"] in synth.CHORD_QUALITIES
            assert clip.labels["instrument_family"] in synth.CHORD_FAMILIES
    with pytest.raises(MergeError, match="music kind"):
        synth.music_clip(0, kind="drum")


@needs_tools
def test_mixed_clips_interleave_speech_and_music():
    mixed = synth.mixed_clips(5, 9, workers=2, progress=False)
    assert [clip.labels["domain"] for clip in mixed] == ["speech", "music", "speech", "music", "speech"]
    assert same(mixed[0::2], synth.speech_clips(3, 9, progress=False))
    assert same(mixed[1::2], synth.music_clips(2, 9, progress=False))


@needs_tools
def test_speech_over_music():
    clip = synth.speech_over_music(1, duration=2.0)
    assert clip.audio.shape == (32000,) and clip.labels["domain"] == "speech+music"
    assert clip.labels["keyword"] in synth.KEYWORDS and clip.labels["instrument_family"] in synth.INSTRUMENT_FAMILIES
    assert np.array_equal(clip.audio, synth.speech_over_music(1, duration=2.0).audio)


@needs_tools
def test_rendered_notes_carry_their_pitch_class():
    clips = synth.music_clips(20, 21, kinds=("note",), progress=False)
    agree = [detected_pitch_class(c.audio, c.labels["instrument_family"]) == c.labels["pitch_class"] for c in clips]
    assert np.mean(agree) >= 0.9, [c.labels for c, ok in zip(clips, agree) if not ok]
