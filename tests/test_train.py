import numpy as np
import pytest
import torch

from merging.train.loops import Schedule, distill, distillation_loss, finetune_classifier, masked_prediction, span_mask
from merging.train.targets import (chroma_filters, cluster_labels, frame_spectra, music_features, pitch_distributions,
                                   semitone_filters, speech_features)
from tiny import tiny_model

SR = 16000


def tones(n=16, seconds=1.0, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    freqs = rng.choice([220.0, 440.0, 880.0, 1760.0], size=n)
    audio = np.stack([0.5 * np.sin(2 * np.pi * f * t) + 0.01 * rng.standard_normal(len(t)) for f in freqs])
    return torch.from_numpy(audio.astype(np.float32)), freqs


def test_features_have_one_frame_per_encoder_frame():
    audio, _ = tones(2)
    frames = tiny_model()._get_feat_extract_output_lengths(torch.tensor(SR)).item()
    assert speech_features(audio).shape == (2, frames, 39)
    assert music_features(audio).shape == (2, frames, 88)


def test_chroma_finds_the_pitch_class_of_a_tone():
    audio, freqs = tones(8)
    spectra = torch.stft(audio, 2048, 320, window=torch.hann_window(2048), return_complex=True).abs().pow(2)
    chroma = (spectra.transpose(1, 2) @ chroma_filters(2048, SR)).mean(1)
    expected = [round(69 + 12 * np.log2(f / 440)) % 12 for f in freqs]
    assert chroma.argmax(1).tolist() == expected


def test_semitone_spectrum_peaks_at_the_played_note():
    audio, freqs = tones(8)
    peaks = (frame_spectra(audio, 4096) @ semitone_filters(4096, SR, 36, 107))[:, 20].argmax(1) + 36
    assert peaks.tolist() == [round(69 + 12 * np.log2(f / 440)) for f in freqs]
    semitones, chroma = pitch_distributions(audio)
    assert semitones.shape == (8, 49, 72) and chroma.shape == (8, 49, 12)
    assert torch.allclose(chroma[:, 20].sum(-1), torch.ones(8))
    assert chroma[:, 20].argmax(1).tolist() == [round(69 + 12 * np.log2(f / 440)) % 12 for f in freqs]
    silent = pitch_distributions(torch.cat([audio[:1, :8000], torch.zeros(1, 8000)], 1))[0]
    assert silent[0, 45:].sum() == 0 and silent[0, 5:20].sum(-1).allclose(torch.ones(15))


def test_cluster_labels_separate_distinct_tones():
    audio, freqs = tones(16)
    labels = cluster_labels(music_features(audio), 8, seed=0)  # spare clusters for the padded edge frames
    middle = labels[:, 10:40].mode(1).values  # steady part of each tone
    freq_of_label = {}
    for label, freq in zip(middle.tolist(), freqs):
        assert freq_of_label.setdefault(label, freq) == freq  # no label shared by two different tones


def test_span_mask_covers_spans_and_every_row():
    mask = span_mask(64, 49, 0.08, 5, torch.Generator().manual_seed(0))
    assert mask.any(1).all() and 0.2 < mask.float().mean() < 0.5
    row = mask[0].int().tolist()
    runs = "".join(map(str, row)).replace("0", " ").split()
    assert all(len(r) >= 5 for r in runs[:-1] if r)  # spans are at least mask_length long (except at the end)


def test_schedule_warms_up_holds_and_decays():
    s = Schedule(100, warmup=0.1, hold=0.4)
    assert s.factor(0) == pytest.approx(0.1) and s.factor(9) == 1 and s.factor(30) == 1 and s.factor(49) == 1
    assert s.factor(75) == pytest.approx(0.5) and s.factor(99) == pytest.approx(0.02)


def test_masked_prediction_learns_its_targets():
    audio, freqs = tones(16, seconds=0.5)
    labels = cluster_labels(music_features(audio), 4, seed=0)
    model = tiny_model()
    record = masked_prediction(model, audio, labels, 4, Schedule(60, batch_size=8, lr=2e-3), seed=0)
    assert record["final_loss"] < 0.6 * record["first_loss"] and not model.training
    model = tiny_model()
    frontend = [p.clone() for p in model.feature_extractor.parameters()]
    record = masked_prediction(model, audio, labels, 4, Schedule(60, batch_size=8, lr=2e-3), seed=0,
                               distributions=pitch_distributions(audio), frontend_lr=0.0)
    assert record["final_loss"] < 0.8 * record["first_loss"] and "72 and 12 pitch bins" in record["objective"]
    assert all(torch.equal(a, b) for a, b in zip(frontend, model.feature_extractor.parameters()))


def test_distillation_brings_the_student_toward_its_teacher():
    audio, _ = tones(8, seconds=0.5)
    teacher, student = tiny_model(seed=1), tiny_model(seed=2)
    before = [p.clone() for p in teacher.parameters()]
    record = distill(student, [(teacher, (1, 2))], audio, Schedule(40, batch_size=8, lr=2e-3), seed=0)
    assert record["final_loss"] < record["first_loss"]
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters()))  # the teacher is never trained
    target = torch.randn(3, 5, 8)
    assert distillation_loss(target, target) < distillation_loss(-target, target)


def test_finetuning_keeps_the_encoder_frozen_at_first():
    audio, freqs = tones(16, seconds=0.5)
    labels = torch.tensor([sorted(set(freqs)).index(f) for f in freqs])
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    finetune_classifier(model, audio, labels, 4, Schedule(10, batch_size=8, lr=1e-3), seed=0, frozen=1.0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    record = finetune_classifier(model, audio, labels, 4, Schedule(30, batch_size=8, lr=1e-3), seed=0, frozen=0.1)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert record["final_loss"] < record["first_loss"] and all(p.requires_grad for p in model.parameters())
