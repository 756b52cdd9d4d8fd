"""Reliability under careless or hostile use, at the library level: random audio and random merge
settings get either a clean MergeError or a correct result, loaded encoders are never changed, and an
export is whole or absent. (The running app is covered in test_app_reliability.py.)"""
from __future__ import annotations

import gc
import io
import math
import os
import re
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
import torch
from transformers import HubertModel

import merging.checkpoint
from merging.audio import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, load_audio, prepare_audio
from merging.checkpoint import load_merge_config, save_encoder, zip_encoder_dir
from merging.encoders import Encoder, build_model, encoder_from_state, load_encoder
from merging.service.config import LabConfig
from merging.service.lab import Lab
from merging.service.session import LabSession
from merging.methods import METHODS, merge
from merging.pipeline import merge_encoders
from merging.state import torch_threads
from merging.spec import COMPONENTS, apply_permutations, hubert_spec, random_permutations
from merging.state import MergeError, state_checksum
from tiny import tiny_model

ROOT = Path(__file__).resolve().parent.parent
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def tone(seconds: float, rate: int, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    mono = (0.5 * np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate)).astype(np.float32)
    return mono if channels == 1 else np.repeat(mono[:, None], channels, axis=1)


def encoded(audio: np.ndarray, rate: int, container: str, subtype: str) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, audio, rate, format=container, subtype=subtype)
    return buffer.getvalue()


def peak_frequency(audio: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.fft.rfftfreq(len(audio), 1 / rate)[spectrum.argmax()])


def assert_clean_audio(audio: np.ndarray, length: int) -> None:
    assert audio.dtype == np.float32 and audio.ndim == 1 and len(audio) == length
    assert np.isfinite(audio).all()


# ---- audio: random arrays and random files ------------------------------------------------------

DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float16, np.float32, np.float64]
RATES = st.one_of(st.sampled_from([8000, 11025, 12345, 16000, 22050, 44100, 44101, 48000, 96000, 384000]),
                  st.integers(-10, 10**7))


@st.composite
def audio_arrays(draw) -> np.ndarray:
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = draw(st.one_of(hnp.array_shapes(min_dims=1, max_dims=1, min_side=0, max_side=3000),
                           hnp.array_shapes(min_dims=2, max_dims=2, min_side=0, max_side=40),
                           hnp.array_shapes(min_dims=3, max_dims=3, max_side=3)))
    if dtype.kind == "f" and draw(st.booleans()):  # mostly audio-like values, sometimes anything at all
        elements = st.floats(-1, 1, width=dtype.itemsize * 8)
    else:
        elements = None
    return draw(hnp.arrays(dtype, shape, elements=elements))


@PROPERTY
@given(audio=audio_arrays(), rate=RATES, target=st.sampled_from([16000, 24000]),
       max_seconds=st.sampled_from([30.0, 0.05]))
def test_any_array_becomes_clean_mono_audio_or_a_merge_error(audio, rate, target, max_seconds):
    original = audio.copy()
    try:
        out, info = prepare_audio(audio, rate, target, max_seconds=max_seconds)
    except MergeError as error:
        assert "\n" not in str(error)
    else:
        used = min(len(audio), int(max_seconds * rate))
        assert_clean_audio(out, math.ceil(used * target / rate))
        assert MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE
        assert bool(info["warnings"]) == (len(audio) > used)
    np.testing.assert_array_equal(audio, original)  # the caller's array is never changed


FILE_KINDS = [("WAV", "PCM_U8"), ("WAV", "PCM_16"), ("WAV", "PCM_24"), ("WAV", "PCM_32"), ("WAV", "FLOAT"),
              ("WAV", "DOUBLE"), ("FLAC", "PCM_16"), ("FLAC", "PCM_24"), ("OGG", "VORBIS")]


@st.composite
def damaged(draw, data: bytes) -> bytes:
    """`data` as it arrived: whole, cut short, with bytes overwritten, or behind a foreign prefix."""
    damage = draw(st.sampled_from(["none", "truncate", "overwrite", "prefix"]))
    if damage == "truncate":
        return data[:draw(st.integers(0, len(data) - 1))]
    if damage == "overwrite":
        start = draw(st.integers(0, len(data) - 1))
        return data[:start] + draw(st.binary(min_size=1, max_size=64)) + data[start + 64:]
    if damage == "prefix":
        return draw(st.binary(min_size=1, max_size=64)) + data
    return data


@PROPERTY
@given(data=st.data(), kind=st.sampled_from(FILE_KINDS), channels=st.integers(1, 3),
       rate=st.sampled_from([8000, 11025, 12345, 44100, 48000]), seconds=st.floats(0.01, 0.5))
def test_any_file_whole_or_damaged_decodes_cleanly_or_is_refused(data, kind, channels, rate, seconds):
    if kind[1] == "VORBIS" and rate == 12345:
        rate = 22050  # the Vorbis encoder has no mode for that rate
    whole = encoded(tone(seconds, rate, channels=channels), rate, *kind)
    arrived = data.draw(damaged(whole))
    try:
        audio, info = load_audio(arrived, 16000)
    except MergeError as error:
        assert arrived != whole or "silent" in str(error)  # an intact file fails only when it is too short to hear
        assert "\n" not in str(error)
    else:
        assert_clean_audio(audio, len(audio))
        if arrived == whole:
            assert info["channels"] == channels and info["sample_rate"] == rate
            assert abs(len(audio) - info["seconds"] * 16000) <= 1


@PROPERTY
@given(data=st.binary(max_size=2048))
def test_random_bytes_are_refused_or_decode_cleanly(data):
    try:
        audio, _ = load_audio(data, 16000)
    except MergeError as error:
        assert "\n" not in str(error)
    else:
        assert_clean_audio(audio, len(audio))


# ---- audio: hostile and unusual files -------------------------------------------------------------

FOREIGN_FILES = {
    "png": b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(200),
    "zip": b"PK\x03\x04" + bytes(200),
    "pdf": b"%PDF-1.7\n" + b"1 0 obj\n<<>>\nendobj\n" * 10,
    "html": b"<!doctype html><script>alert(1)</script>" * 10,
    "midi": b"MThd\x00\x00\x00\x06\x00\x01\x00\x01\x01\xe0MTrk\x00\x00\x00\x04\x00\xff\x2f\x00",
    "mp4": b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41" + bytes(200),
}


@pytest.mark.parametrize("kind", FOREIGN_FILES)
def test_a_file_of_another_kind_is_refused_whatever_its_name(tmp_path, kind):
    disguised = tmp_path / "clip.wav"
    disguised.write_bytes(FOREIGN_FILES[kind])
    with pytest.raises(MergeError, match="not a readable audio file: clip.wav"):
        load_audio(disguised, 16000)


@pytest.mark.parametrize("rate", [1, 999, 384001, 2_000_003])
def test_a_header_claiming_an_absurd_sample_rate_is_refused_before_any_resampling(rate):
    header = encoded(tone(0.1, 8000), 8000, "WAV", "PCM_16")
    data = header[:24] + rate.to_bytes(4, "little") + header[28:]  # the WAV header's sample rate field
    with pytest.raises(MergeError, match=f"sample rate {rate} Hz is outside {MIN_SAMPLE_RATE}–{MAX_SAMPLE_RATE} Hz"):
        load_audio(data, 16000)


@pytest.mark.parametrize("rate", [7350, 12345, 44101, 96001])
def test_odd_sample_rates_are_converted_at_the_right_pitch_and_length(rate):
    audio, info = load_audio(encoded(tone(1.0, rate, freq=500.0), rate, "WAV", "PCM_24"), 16000)
    assert info["sample_rate"] == rate
    assert_clean_audio(audio, 16000)
    assert abs(peak_frequency(audio, 16000) - 500.0) < 2


def test_a_long_file_is_decoded_only_as_far_as_it_is_used(tmp_path):
    long_file = tmp_path / "two-minutes.wav"
    sf.write(long_file, tone(120.0, 8000), 8000, subtype="PCM_16")  # 1.9 MB on disk, 3.8 MB as float32
    tracemalloc.start()
    try:
        audio, info = load_audio(long_file, 16000, max_seconds=1.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(audio) == 16000 and info["seconds"] == pytest.approx(120.0) and "longer than 1 s" in info["warnings"][0]
    assert peak < 1_000_000  # bytes: a second of audio and its buffers, not two minutes


def test_samples_far_beyond_full_scale_are_refused_not_overflowed():
    with pytest.raises(MergeError, match="as large as 1e\\+30"):
        prepare_audio(np.full(1600, 1e30), 16000, 16000)
    assert np.isfinite(prepare_audio(np.full(1600, 3e4, dtype=np.float32), 16000, 16000)[0]).all()  # int-scaled floats


# ---- merging: no mutation, no aliasing, clean refusals --------------------------------------------

LAYERS = 2  # of the tiny encoders
ROLE_SOURCES = {"linear": {}, "permute": {}, "speech_ft": {"pretrained": "speech", "finetuned": "speech_ft"}}


class RandomAlignment:
    """An alignment by random valid permutations of the chosen components (what a correlation
    alignment returns has the same shape; its values do not matter here)."""

    def __init__(self, spec, components: tuple[str, ...], seed: int) -> None:
        self.spec, self.components = spec, components
        self.perms = random_permutations(spec, components, torch.Generator().manual_seed(seed))

    def apply(self, state):
        return apply_permutations(state, self.spec, self.perms)


@pytest.fixture(scope="module")
def encoders() -> dict[str, Encoder]:
    """Tiny encoders for every role a method takes."""
    def encoder(seed: int, name: str) -> Encoder:
        model = tiny_model(seed=seed)
        return encoder_from_state(model.config, model.state_dict(), sample_rate=16000, normalize=False, name=name, source=name)

    return {role: encoder(seed, role) for seed, role in enumerate(["speech", "music", "base", "speech_ft"])}


def method_inputs(method: str, encoders: dict[str, Encoder]) -> dict[str, Encoder]:
    sources = ROLE_SOURCES.get(method, {})
    return {role: encoders[sources.get(role, role)] for role in METHODS[method].inputs}


def random_merge_settings(method: str, rng: np.random.Generator, spec) -> tuple[dict, dict]:
    """(parameters, alignments) drawn across each parameter's whole valid range."""
    draw = {
        "alpha": lambda: float(rng.choice([0.0, 1.0, rng.uniform()])),
        "layer_alphas": lambda: list(rng.uniform(size=LAYERS)) if rng.uniform() < 0.3 else None,
        "lambda_speech": lambda: float(rng.uniform(0 if method == "ties" else -1, 2)),
        "lambda_music": lambda: float(rng.uniform(0 if method == "ties" else -1, 2)),
        "density": lambda: float(rng.uniform(0.01, 1)),
        "drop": lambda: float(rng.uniform(0, 0.99)),
        "seed": lambda: int(rng.integers(0, 2**31)),
        "rank_tol": lambda: float(rng.uniform(0, 0.5)),
        **{name: (lambda values=values: str(rng.choice(values))) for name, values in CHOICES.items()},
    }
    params = {name: draw[name]() for name in METHODS[method].parameters if name in draw}
    components = tuple(c for c in COMPONENTS if rng.uniform() < 0.5) or ("ffn",)
    alignment = RandomAlignment(spec, components, int(rng.integers(0, 2**31)))
    if method == "permute":
        return params, {"music": alignment}
    if "base" in METHODS[method].inputs and rng.uniform() < 0.3:  # aligned to the base first
        return params, {str(rng.choice(["speech", "music"])): alignment}
    return params, {}


def test_a_thousand_random_merges_leave_every_encoder_unchanged_and_share_nothing_with_it(encoders):
    rng = np.random.default_rng(0)
    spec = hubert_spec(encoders["speech"].config, list(encoders["speech"].state_dict()))
    before = {role: state_checksum(encoder.state_dict()) for role, encoder in encoders.items()}
    shapes = {name: tensor.shape for name, tensor in encoders["speech"].state_dict().items()}
    for step in range(1000):
        method = list(METHODS)[step % len(METHODS)]
        params, alignments = random_merge_settings(method, rng, spec)
        with torch_threads(1):  # tiny SVDs on a busy machine: a second thread only waits (80x slower)
            merged = merge_encoders(method, method_inputs(method, encoders), alignments=alignments, **params)
        assert {name: tensor.shape for name, tensor in merged.items()} == shapes, (method, params)
        assert all(torch.isfinite(t).all() for t in merged.values()), (method, params)
        for tensor in merged.values():  # what a session does with its weights must not reach the encoders
            tensor.add_(1)
    assert {role: state_checksum(encoder.state_dict()) for role, encoder in encoders.items()} == before


# Each parameter's valid values: (low, high, low included, high included); `merge` must take exactly these.
VALID = {
    "alpha": (0, 1, True, True), "lambda": (-1, 2, True, True), "ties lambda": (0, 2, True, True),
    "density": (0, 1, False, True), "drop": (0, 1, True, False), "rank_tol": (0, 1, True, False),
}
CHOICES = {"trim": ("task_vector", "per_tensor"), "combine": ("task_arithmetic", "ties"),
           "variant": ("horizontal", "vertical"), "prune": ("joint", "per_model"), "conv": ("elementwise", "drm")}
ANY_NUMBER = st.one_of(st.floats(-3, 3), st.sampled_from([0.0, 1.0, -1.0, 2.0, math.nan, math.inf, -math.inf, 1e308]),
                       st.integers(-3, 3), st.booleans(), st.text(max_size=3), st.none())


def is_valid(method: str, name: str, value) -> bool:
    if name in CHOICES:
        return isinstance(value, str) and value in CHOICES[name]
    if name == "seed":
        return isinstance(value, int)  # bools are ints, and a fine seed
    if name == "layer_alphas":
        return value is None or (len(value) == LAYERS and all(is_valid(method, "alpha", a) for a in value))
    if name == "layer_lambdas":
        return value is None or (len(value) == LAYERS and all(
            isinstance(pair, (tuple, list)) and len(pair) == 2 and all(is_valid(method, "lambda", x) for x in pair) for pair in value))
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return False
    kind = ("ties lambda" if method == "ties" else "lambda") if name.startswith("lambda") else name
    low, high, low_in, high_in = VALID[kind]
    return (low <= value if low_in else low < value) and (value <= high if high_in else value < high)


@st.composite
def merge_settings(draw) -> tuple[str, dict]:
    method = draw(st.sampled_from(sorted(METHODS)))
    params = {}
    for name in METHODS[method].parameters:
        if name == "alignment" or not draw(st.booleans()):
            continue
        if name == "layer_alphas":
            params[name] = draw(st.one_of(st.none(), st.lists(st.floats(-0.5, 1.5), max_size=3)))
        elif name == "layer_lambdas":
            pairs = st.one_of(st.tuples(st.floats(-1.5, 2.5), st.floats(-1.5, 2.5)), st.tuples(st.floats(0, 1)), st.floats(0, 1))
            params[name] = draw(st.one_of(st.none(), st.lists(pairs, max_size=3)))
        elif name == "seed":
            params[name] = draw(st.one_of(st.integers(-2**40, 2**40), st.floats(-3, 3)))
        else:
            params[name] = draw(st.one_of(st.sampled_from(CHOICES[name] + ("other",)), ANY_NUMBER)) if name in CHOICES \
                else draw(ANY_NUMBER)
    return method, params


@pytest.fixture(scope="module")
def tiny_states(encoders) -> dict[str, dict]:
    return {role: {name: t.clone() for name, t in encoder.state_dict().items()} for role, encoder in encoders.items()}


@PROPERTY
@given(setting=merge_settings())
def test_any_merge_setting_merges_cleanly_exactly_when_it_is_valid(tiny_states, setting):
    method, params = setting
    sources = ROLE_SOURCES.get(method, {})
    inputs = {role: tiny_states[sources.get(role, role)] for role in METHODS[method].inputs}
    spec = hubert_spec(tiny_model().config, list(tiny_states["speech"]))
    extra = {"alignment": RandomAlignment(spec, COMPONENTS, seed=0)} if method == "permute" else {}
    before = {role: state_checksum(state) for role, state in inputs.items()}
    valid = all(is_valid(method, name, value) for name, value in params.items())
    try:
        with torch_threads(1):
            merged = merge(method, inputs, **params, **extra)
    except MergeError as error:
        assert not valid, f"{method} {params} refused: {error}"
    else:
        assert valid, f"{method} {params} accepted"
        first = inputs[METHODS[method].inputs[0]]
        assert {k: (t.shape, t.dtype) for k, t in merged.items()} == {k: (t.shape, t.dtype) for k, t in first.items()}
        assert all(torch.isfinite(t).all() for t in merged.values())
    assert {role: state_checksum(state) for role, state in inputs.items()} == before


# ---- export: whole or absent, and it reloads to the same model ------------------------------------

def outputs(model) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.randn(1, 4000, generator=torch.Generator().manual_seed(0))).last_hidden_state


@pytest.mark.parametrize("method", list(METHODS))
def test_an_exported_merge_reloads_to_the_same_weights_and_outputs(encoders, method, tmp_path):
    rng = np.random.default_rng(1)
    spec = hubert_spec(encoders["speech"].config, list(encoders["speech"].state_dict()))
    params, alignments = random_merge_settings(method, rng, spec)
    with torch_threads(1):
        merged = merge_encoders(method, method_inputs(method, encoders), alignments=alignments, **params)
    config = encoders["speech"].config
    saved = save_encoder(tmp_path / "merged", merged, config, sample_rate=16000, normalize=False,
                         merge_config={"method": method, "arguments": params})
    zipfile.ZipFile(zip_encoder_dir(saved, tmp_path / "merged.zip")).extractall(tmp_path / "unzipped")
    reloaded = tmp_path / "unzipped" / "merged"
    assert state_checksum(load_encoder(reloaded).state_dict()) == state_checksum(merged)
    assert torch.equal(outputs(HubertModel.from_pretrained(reloaded).eval()), outputs(build_model(config, merged)))


@pytest.fixture(scope="module")
def lab(lab_models) -> Lab:
    return Lab(LabConfig(models_dir=lab_models, calibration_limit=16, fit_iterations=10))


@pytest.fixture(scope="module")
def merged_session(lab) -> LabSession:
    return lab.merge(LabSession(), lab.default_sources(), "ties", {"lambda_speech": 0.7, "lambda_music": 0.4})


def test_the_labs_export_reloads_to_the_sessions_weights(lab, merged_session, tmp_path):
    zipfile.ZipFile(lab.export(merged_session, {})).extractall(tmp_path)
    reloaded = load_encoder(tmp_path / "merged-ties")
    with lab.runner.turn(), lab.loaded(merged_session.merged.recipe) as merged:  # the session keeps a recipe: rebuilt
        assert state_checksum(reloaded.state_dict()) == state_checksum(merged.state_dict())
    assert load_merge_config(tmp_path / "merged-ties")["arguments"] == {"lambda_speech": 0.7, "lambda_music": 0.4}


def half_written_weights(tensors, filename, metadata=None):
    Path(filename).write_bytes(b"the first half of a safetensors file")
    raise OSError("disk full")


def refused_rename(source, destination):
    raise OSError("disk full")


@pytest.mark.parametrize("failure", ["weights half written", "zip rename refused"])
def test_an_interrupted_export_leaves_nothing_behind_and_the_next_one_works(lab, merged_session, monkeypatch, failure):
    root = lab.export(merged_session, {}).parent.parent
    before = sorted(root.rglob("*"))
    with monkeypatch.context() as patch:
        if failure == "weights half written":
            patch.setattr(merging.checkpoint, "save_file", half_written_weights)
        else:
            patch.setattr(merging.checkpoint.os, "replace", refused_rename)
        with pytest.raises(OSError, match="disk full"):
            lab.export(merged_session, {})
    assert sorted(root.rglob("*")) == before  # no partial folder, zip or temporary file
    with zipfile.ZipFile(lab.export(merged_session, {})) as archive:
        assert archive.testzip() is None and "merged-ties/model.safetensors" in archive.namelist()


def test_exports_are_capped_and_removed_with_their_lab(lab_models, lab, merged_session):
    archives = [lab.export(merged_session, {}) for _ in range(10)]
    assert archives[-1].is_file() and len(list(archives[0].parent.parent.iterdir())) == 8
    other = Lab(LabConfig(models_dir=lab_models))
    root = other.export(merged_session, {}).parent.parent
    del other
    gc.collect()
    assert not root.exists()


# ---- no remote code ---------------------------------------------------------------------------------

REMOTE_CODE_ON = re.compile(r"""trust_remote_code['"]?\s*[=:]\s*(?!\s*False\b)""")


def python_sources() -> list[Path]:
    sources = []
    for folder, subfolders, files in os.walk(ROOT):
        subfolders[:] = [d for d in subfolders if not d.startswith(".") and d not in ("runs", "assets", "node_modules")]
        sources += [Path(folder, name) for name in files if name.endswith(".py")]
    return sources


def test_no_source_ever_turns_on_trust_remote_code():
    quote = '"'
    assert REMOTE_CODE_ON.search("trust_remote_code" + "=True") and REMOTE_CODE_ON.search(f"{quote}trust_remote_code{quote}: 1")
    assert not REMOTE_CODE_ON.search("trust_remote_code" + "=False")
    sources = python_sources()
    assert ROOT / "merging" / "encoders.py" in sources and ROOT / "app.py" in sources
    offenders = [f"{p.relative_to(ROOT)}:{n}" for p in sources
                 for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1) if REMOTE_CODE_ON.search(line)]
    assert offenders == []
