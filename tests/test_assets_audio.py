import hashlib
from collections import Counter

import numpy as np
import pytest
import soundfile as sf

from merging.audio import load_audio
from merging.synth import ASSETS_DIR, TASKS, load_manifest, probe_split, tool_versions
from merging.synth.assets import CLIP_SETS, FOLDERS, example_clips, save_clip
from test_synth import detected_pitch_class, needs_tools

MANIFEST = load_manifest()
FILES = MANIFEST["files"]


def test_manifest_and_folder_agree():
    listed = [f["path"] for f in FILES]
    assert len(listed) == len(set(listed))
    on_disk = sorted(p.relative_to(ASSETS_DIR).as_posix() for folder in FOLDERS for p in (ASSETS_DIR / folder).rglob("*") if p.is_file())
    assert on_disk == sorted(listed)
    for f in FILES:
        info = sf.info(ASSETS_DIR / f["path"])
        assert info.samplerate == f["sample_rate"] == 16000 and info.channels == 1
        assert info.frames == round(f["duration"] * 16000)


def test_tasks_and_labels():
    assert set(MANIFEST["tasks"]) == set(TASKS) == {"keyword", "speaker", "instrument_family", "pitch_class", "chord_quality"}
    for name, task in MANIFEST["tasks"].items():
        assert task["domain"] == TASKS[name][0] and task["labels"] == list(TASKS[name][2])
    for f in FILES:
        assert f["split"] in ("calibration", "train", "test", "example")
        for name, task in MANIFEST["tasks"].items():
            if name in f["labels"]:
                assert f["labels"][name] in task["labels"], f
        if f["probe_set"] is not None:
            carried = {name for name, task in MANIFEST["tasks"].items() if task["probe_set"] == f["probe_set"]}
            assert carried <= set(f["labels"]), f
    domains = Counter(f["labels"]["domain"] for f in FILES if f["split"] == "calibration")
    assert domains["speech"] == domains["music"] >= 100


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("task", list(TASKS))
def test_probe_splits_are_disjoint_and_large_enough(task):
    train_paths, train_labels = probe_split(task, "train")
    test_paths, test_labels = probe_split(task, "test")
    assert len(test_paths) >= 100 and len(train_paths) >= len(test_paths)
    assert not {p.name for p in train_paths} & {p.name for p in test_paths}
    assert not {digest(p) for p in train_paths} & {digest(p) for p in test_paths}
    labels = set(MANIFEST["tasks"][task]["labels"])
    assert set(train_labels) == set(test_labels) == labels


def test_assets_stay_small():
    total = sum(p.stat().st_size for p in ASSETS_DIR.rglob("*") if p.is_file())
    assert total <= 20e6, f"assets/audio is {total / 1e6:.1f} MB"


def test_shipped_notes_carry_their_pitch_class():
    paths, pitch_classes = probe_split("pitch_class", "test")
    _, families = probe_split("instrument_family", "test")
    picks = np.random.default_rng(0).choice(len(paths), 20, replace=False)
    agree = [detected_pitch_class(load_audio(paths[i], 16000)[0], families[i]) == pitch_classes[i] for i in picks]
    assert np.mean(agree) >= 0.9


@needs_tools
def test_shipped_clips_are_what_the_recipe_renders(tmp_path):
    if tool_versions() != MANIFEST["recipe"]["tools"]:
        pytest.skip("synthesiser or codec versions differ from the ones that built the assets")
    for clip_set in CLIP_SETS:
        name = f"{clip_set.name}-0002.ogg"
        fresh = save_clip(tmp_path / name, clip_set.jobs()[2]())
        assert fresh.read_bytes() == (ASSETS_DIR / clip_set.folder / name).read_bytes(), name
    for name, clip in list(example_clips().items())[:2]:
        assert save_clip(tmp_path / name, clip).read_bytes() == (ASSETS_DIR / "examples" / name).read_bytes(), name
