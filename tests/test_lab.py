"""merging.service, the engine behind the app, without the app."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from merging.catalogue import MODEL_NAMES, MODELS_DIR
from merging.service import Service
from merging.service.allowlist import AllowList
from merging.service.config import PAPER_HUB_ENCODERS, LabConfig
from merging.service.controls import merge_params, parse_layer_values
from merging.service.lab import Lab
from merging.service.pool import ModelPool, copying
from merging.service.session import LabSession
from merging.state import MergeError, state_checksum, torch_threads


@pytest.fixture(scope="module")
def lab(lab_models):
    return Lab(LabConfig(models_dir=lab_models, calibration_limit=16, fit_iterations=10))


@pytest.fixture(scope="module")
def service(lab_models):
    return Service.start(LabConfig(models_dir=lab_models, calibration_limit=16, fit_iterations=10), budget_seconds=0.1)


def test_layer_values_parse_from_text():
    assert parse_layer_values("") is None and parse_layer_values("  ") is None
    assert parse_layer_values("0.1, 0.2 0.3;0.4") == [0.1, 0.2, 0.3, 0.4]
    assert parse_layer_values("0.9/0.1, 0.5:0.5", pairs=True) == [(0.9, 0.1), (0.5, 0.5)]
    for bad in ("0.1, x", "nan", "inf"):
        with pytest.raises(MergeError, match="per-layer α"):
            parse_layer_values(bad)
    with pytest.raises(MergeError, match="not a speech/music pair"):
        parse_layer_values("0.9", "per-layer λ", pairs=True)


def test_each_method_gets_only_its_own_parameters():
    page = {"alpha": 0.1, "lambda_speech": 0.5, "lambda_music": 0.5, "layer_alphas": "", "density": 0.3}
    assert merge_params("permute", page) == {"alpha": 0.1}
    assert merge_params("linear", {**page, "alpha": 0.3, "layer_alphas": "0.1, 0.2"}) == {"alpha": 0.3, "layer_alphas": [0.1, 0.2]}
    assert merge_params("speech_ft", {**page, "alpha": 0.25}) == {"alpha": 0.25}
    assert merge_params("dare", {**page, "lambda_speech": 0.7, "lambda_music": 0.3}) == {"lambda_speech": 0.7, "lambda_music": 0.3}
    assert merge_params("ties", page) == {"lambda_speech": 0.5, "lambda_music": 0.5, "density": 0.3}
    with pytest.raises(MergeError, match="per-layer α applies to linear and permute"):
        merge_params("ties", {**page, "layer_alphas": [0.1]})
    with pytest.raises(MergeError, match="unknown merge method .average.: choose from linear"):
        merge_params("average", page)  # the registry names the valid ones
    with pytest.raises(MergeError, match="no merge method has a parameter 'colour'"):
        merge_params("linear", {"colour": "red"})


def test_settings_come_from_the_environment():
    config = LabConfig.from_env({"MERGE_LAB_MODELS": "/models", "MERGE_LAB_ENCODERS": "org/a, /data/b",
                                 "MERGE_LAB_MAX_UPLOAD_MB": "5", "MERGE_LAB_QUICK_SECONDS": "4"})
    assert config.models_dir == Path("/models") and config.extra_encoders == ("org/a", "/data/b")
    assert config.max_upload_bytes == 5 * 2**20 and config.quick_seconds == 4
    assert LabConfig.from_env({}).models_dir == MODELS_DIR and LabConfig.from_env({}).extra_encoders == ()
    assert LabConfig.from_env({"SPACE_ID": "me/merge-lab"}).extra_encoders == PAPER_HUB_ENCODERS


def test_registry_serves_only_its_allow_list(lab_models, tmp_path):
    registry = AllowList(tmp_path, extra=[str(lab_models / MODEL_NAMES["music"]), "org/not-downloaded"])
    with pytest.raises(MergeError, match=f"'{MODEL_NAMES['speech']}' is not in {tmp_path}.*MERGE_LAB_MODELS"):
        registry.get(MODEL_NAMES["speech"])
    for outsider in ("/etc", str(lab_models / MODEL_NAMES["speech"]), "facebook/hubert-large-ll60k"):
        with pytest.raises(MergeError, match="not one of this app's encoders"):
            registry.get(outsider)
    music = registry.get(str(lab_models / MODEL_NAMES["music"]))  # an operator's folder outside models_dir
    assert registry.get(str(lab_models / MODEL_NAMES["music"])) is music  # loaded once, shared
    assert registry.label(MODEL_NAMES["speech"]) == f"{MODEL_NAMES['speech']} (missing)"


def test_the_pool_reuses_one_model_per_device_and_architecture(lab):
    pool = ModelPool()
    speech, music, student = (lab.encoders.get(MODEL_NAMES[r]) for r in ("speech", "music", "student_base"))
    with pool.hold(speech, "cpu", "a", copying(speech.state_dict())) as first:
        model = first.model
        assert state_checksum(first.state_dict()) == state_checksum(speech.state_dict())
    with pool.hold(speech, "cpu", "b", copying(music.state_dict())) as second:
        assert second.model is model and state_checksum(second.state_dict()) == state_checksum(music.state_dict())
        assert second.model is not music.model and second.model is not speech.model
    with pool.hold(speech, "cpu", "b", lambda out: pytest.fail("rewrote weights it already holds")) as again:
        assert state_checksum(again.state_dict()) == state_checksum(music.state_dict())
    with pool.hold(student, "cpu", "c", copying(student.state_dict())) as third:
        assert third.model is not model
    assert len(pool) == 2


def test_merge_returns_a_new_session_and_leaves_the_encoders_alone(lab):
    sources = lab.default_sources()
    checksums = {key: state_checksum(lab.encoders.get(key).state_dict()) for key in sources.values()}
    empty = LabSession()
    with pytest.raises(MergeError, match="run the alignment first"):
        lab.merge(empty, sources, "permute")
    aligned = lab.align(empty, sources["speech"], sources["music"], components=("cnn", "ffn"))
    merged = lab.merge(aligned, sources, "permute", {"alpha": 0.5})
    assert empty.alignment is None and aligned.merged is None and merged.alignment is aligned.alignment
    assert merged.merged.params == {"alpha": 0.5} and merged.merged.sources == {"speech": sources["speech"], "music": sources["music"]}
    assert {key: state_checksum(lab.encoders.get(key).state_dict()) for key in sources.values()} == checksums
    with pytest.raises(MergeError, match="choose at least one component"):
        lab.align(empty, sources["speech"], sources["music"], components=("cnn", "mlp"))


def test_a_merge_writes_weights_only_and_its_curve_holds_full_suite_points_only(service):
    lab, scoring = service.lab, service.scoring
    sources = lab.default_sources()
    session = lab.merge(LabSession(), sources, "linear", {"alpha": 0.3})
    assert len(scoring.book) == 0 and session.merged.stage is None  # scores come from the live stages, not the merge
    recipe = session.merged.recipe
    stream = scoring.stream(recipe, scoring.lease("someone"))
    quick = next(scores for _, scores in stream if scores is not None and scores.corrected)  # once the inputs are scored
    assert quick.stage != "full" and [p.label for p in scoring.curve(recipe)] == ["α=0", "α=1"]  # the inputs only
    full = [scores for _, scores in stream if scores is not None][-1]
    points = scoring.curve(recipe)
    assert [(p.label, p.stage) for p in points] == [("α=0", "full"), ("α=0.3", "full"), ("α=1", "full")]
    assert points[1].speech == pytest.approx(full.average("speech").score)
    assert lab.with_stage(session, full.summary()).merged.stage["stage"] == "full"
    again = lab.merge(session, sources, "linear", {"alpha": 0.6})
    assert again.previous is session.merged and again.merged.recipe.family == recipe.family
    ties = lab.merge(LabSession(), sources, "ties", {"lambda_speech": 0.8, "lambda_music": 0.2}).merged.recipe
    list(scoring.stream(ties))
    assert [p.label for p in scoring.curve(ties)] == ["λ=0.8/0.2"]  # no α ends: its position is only a label
    probes = scoring.probes(recipe)  # the listening panels' probes: the last stage's
    assert set(probes) == set(full.accuracy)


def test_the_showcase_group_is_the_best_gain_among_drawable_groups():
    from types import SimpleNamespace

    from merging.service.alignment_summary import showcase_group

    def group(size, before, after):
        return SimpleNamespace(perm=range(size), before=before, after=after)

    alignment = SimpleNamespace(groups={"conv0": group(64, 0.4, 0.8), "conv2": group(64, 0.1, 0.5),
                                        "ffn0": group(512, 0.01, 0.3)})
    assert showcase_group(alignment) == "conv2"
    assert showcase_group(alignment, max_units=8) == "ffn0"  # none small enough: the best of all


def test_thread_count_is_restored():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_a_cached_alignment_does_not_wait_for_other_sessions_computations(lab):
    import threading

    speech, music = lab.default_sources()["speech"], lab.default_sources()["music"]
    lab.align(LabSession(), speech, music)
    done = threading.Event()
    with lab.runner.turn():  # another session's merge in progress
        worker = threading.Thread(target=lambda: (lab.align(LabSession(), speech, music), done.set()))
        worker.start()
        worker.join(timeout=10)
        assert done.is_set()


def retained_tensor_bytes(root) -> int:
    """Bytes of the distinct tensor storages reachable from `root` (what keeping it alive costs)."""
    import gc
    import types

    seen, storages, stack = set(), {}, [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, (type, types.ModuleType, types.FunctionType)):
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            storages[obj.untyped_storage().data_ptr()] = obj.untyped_storage().nbytes()
            continue
        stack.extend(gc.get_referents(obj))
    return sum(storages.values())


def test_sessions_keep_recipes_and_exports_rebuild_the_same_weights_bit_for_bit(lab, tmp_path):
    import zipfile

    from merging.encoders import load_encoder
    from merging.pipeline import merge_encoders
    from merging.registry import get_method

    sources = lab.default_sources()
    aligned = lab.align(LabSession(), sources["speech"], sources["music"], components=("cnn", "ffn"))
    controls = {"alpha": 0.3, "lambda_speech": 0.6, "lambda_music": 0.3}
    sessions = [lab.merge(aligned, sources, method, controls) for method in ("permute", "linear", "ties", "speech_ft")]
    for session in sessions:  # later merges overwrote the pooled model: each export rebuilds its own weights
        recipe = session.merged.recipe
        aligns = get_method(recipe.method).aligns
        with torch_threads(1):
            expected = merge_encoders(recipe.method, {role: lab.encoders.get(key) for role, key in recipe.inputs.items()},
                                      alignments={aligns: session.alignment} if aligns else None, **recipe.params)
        zipfile.ZipFile(lab.export(session, {})).extractall(tmp_path / recipe.method)
        exported = load_encoder(tmp_path / recipe.method / f"merged-{recipe.method}")
        assert state_checksum(exported.state_dict()) == state_checksum(expected)


def test_many_sessions_hold_no_weights(lab):
    sources = lab.default_sources()
    one_merge = sum(t.numel() * t.element_size() for t in lab.encoders.get(sources["speech"]).state_dict().values())
    sessions = [lab.merge(LabSession(), sources, "linear", {"alpha": round(0.02 * i, 2)}) for i in range(1, 41)]
    first_half, all_of_them = retained_tensor_bytes(sessions[:20]), retained_tensor_bytes(sessions)
    # each further session adds its probes' weights (tiny next to a merge's, ~1e-4 of it at base size), no merged weights
    assert (all_of_them - first_half) / 20 < 0.25 * one_merge
    assert len(lab.runner.pool) <= 2  # one model per architecture (full encoders, students), however many sessions


def test_different_sample_rates_are_refused_unless_allowed(lab_models, tmp_path):
    import json
    import shutil
    import zipfile

    fast = tmp_path / "music-24k"
    shutil.copytree(lab_models / MODEL_NAMES["music"], fast)
    preprocessor = json.loads((fast / "preprocessor_config.json").read_text())
    (fast / "preprocessor_config.json").write_text(json.dumps({**preprocessor, "sampling_rate": 24000}))
    lab = Lab(LabConfig(models_dir=lab_models, extra_encoders=(str(fast),), fit_iterations=5))
    sources = {**lab.default_sources(), "music": str(fast)}
    with pytest.raises(MergeError, match="takes 16000 Hz audio but 'music-24k' .music. takes 24000 Hz: each CNN front end"):
        lab.merge(LabSession(), sources, "linear", {"alpha": 0.5})
    assert any("24000 Hz" in problem for problem in lab.describe(sources, "linear")[1])
    assert not any("24000 Hz" in problem for problem in lab.describe(sources, "ties")[1])  # ties does not use it
    session = lab.merge(LabSession(), sources, "linear", {"alpha": 0.5}, allow_rate_mismatch=True)
    record = json.loads(zipfile.ZipFile(lab.export(session, {})).read("merged-linear/merge_config.json"))
    assert "merged despite different sample rates" in record["sample_rate_mismatch"]
    assert record["inputs"]["music"]["source"] == "music-24k"  # a folder by its name, never the server's path


def test_only_the_methods_roles_are_checked_and_full_size_pairs_get_no_tiny_students(lab):
    sources = {**lab.default_sources(), "student_music": MODEL_NAMES["speech"]}  # a mismatched student
    assert lab.describe(sources, "permute")[1] == []
    assert any("incompatible encoders" in problem for problem in lab.describe(sources, "ties")[1])
    assert lab.suggested_sources(MODEL_NAMES["speech"], MODEL_NAMES["music"]) == lab.default_sources()
    other = lab.suggested_sources(MODEL_NAMES["student_speech"], MODEL_NAMES["student_music"])  # another architecture
    assert other["speech"] == MODEL_NAMES["student_speech"] and all(other[r] is None for r in ("student_base", "speech_ft"))
    with pytest.raises(MergeError, match="needs an encoder for its 'base' input"):
        lab.merge(LabSession(), other, "ties")
