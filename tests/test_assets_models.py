"""The shipped encoders (assets/models): complete, loadable, runnable, and documented by their cards."""
import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import HubertModel

from merging.catalogue import MODEL_NAMES
from merging.encoders import check_compatible, load_encoder
from merging.synth import probe_split
from merging.train import MODELS_DIR, RECIPES

ASSETS = MODELS_DIR.parent


@pytest.fixture(scope="module")
def encoders():
    return {role: load_encoder(MODELS_DIR / name) for role, name in MODEL_NAMES.items()}


def test_every_model_of_the_recipe_is_shipped_with_its_files():
    assert {recipe.name for recipe in RECIPES.values()} == set(MODEL_NAMES.values())
    for name in MODEL_NAMES.values():
        files = {p.name for p in (MODELS_DIR / name).iterdir()}
        assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md", "training.json"} <= files, name


def test_assets_stay_under_90_mb():
    # 60 MB of encoders and audio, and the built-ins' warm results (27 MB: a fresh clone answers in seconds)
    assert sum(p.stat().st_size for p in ASSETS.rglob("*") if p.is_file()) < 90 * 2**20


def test_every_model_loads_natively_and_runs_on_a_probe_clip(encoders):
    clip = torch.from_numpy(np.stack([_first_clip()]))
    for role, encoder in encoders.items():
        plain = HubertModel.from_pretrained(MODELS_DIR / MODEL_NAMES[role]).eval()
        with torch.no_grad():
            ours, theirs = encoder.model(clip).last_hidden_state, plain(clip).last_hidden_state
        assert ours.shape == (1, 49, encoder.config.hidden_size) and torch.isfinite(ours).all(), role
        torch.testing.assert_close(ours, theirs)
        assert encoder.sample_rate == 16000


def test_pairs_that_are_merged_together_are_compatible(encoders):
    check_compatible(encoders["speech"].config, encoders["music"].config)
    check_compatible(encoders["speech"].config, encoders["speech_ft"].config)
    for role in ("student_speech", "student_music", "student_multi"):
        check_compatible(encoders["student_base"].config, encoders[role].config)


def test_students_moved_away_from_their_shared_init_and_fine_tuning_drifted_little(encoders):
    def distance(a, b):
        sa, sb = encoders[a].state_dict(), encoders[b].state_dict()
        return sum((sa[k] - sb[k]).pow(2).sum() for k in sa).sqrt() / sum(sa[k].pow(2).sum() for k in sa).sqrt()

    assert distance("student_speech", "student_base") > 0.01 and distance("student_music", "student_base") > 0.01
    assert distance("speech_ft", "speech") < 0.5 * distance("music", "speech")


def test_cards_say_how_each_model_was_made_and_what_it_scores():
    for name in MODEL_NAMES.values():
        text = (MODELS_DIR / name / "README.md").read_text()
        record = json.loads((MODELS_DIR / name / "training.json").read_text())
        for needle in ("- data:", "- objective:", "- steps:", "- wall time:", "## Probe scores", "random-init"):
            assert needle in text, (name, needle)
        assert f"{record['steps']} of {record['batch_size']} clips" in text
        assert re.search(r"speech average \*\*\d+\.\d\*\*, music average \*\*\d+\.\d\*\*", text), name


def _first_clip() -> np.ndarray:
    from merging.audio import load_audio

    paths, _ = probe_split("keyword", "test")
    return load_audio(paths[0], 16000)[0]


def test_trained_encoders_beat_random_init_on_their_own_probes(encoders):
    from merging.probes import ProbeSuite, builtin_suite
    from merging.encoders import random_init

    full = builtin_suite(max_train=120, max_test=60)
    tasks = [t for t in full.tasks if t.name in ("keyword", "pitch_class")]
    used = sorted({i for t in tasks for i in t.train + t.test})
    new = {old: k for k, old in enumerate(used)}
    tasks = [dataclasses.replace(t, train=tuple(new[i] for i in t.train), test=tuple(new[i] for i in t.test)) for t in tasks]
    suite = ProbeSuite([full.clips[i] for i in used], tasks, full.sample_rate)
    random = suite.score(random_init(encoders["speech"])).accuracy
    speech, music = suite.score(encoders["speech"]).accuracy, suite.score(encoders["music"]).accuracy
    assert speech["keyword"] >= random["keyword"] + 20, (speech, random)
    assert music["pitch_class"] >= random["pitch_class"] + 15, (music, random)
    assert music["pitch_class"] >= speech["pitch_class"] + 20 and speech["keyword"] >= music["keyword"] + 10
