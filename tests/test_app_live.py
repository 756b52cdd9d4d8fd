"""The /merge endpoint streams live scores: a quick estimate with intervals, then refined stages up to the full suite."""
from __future__ import annotations

import json

import pytest
from gradio_client import Client

from merging.catalogue import MODEL_NAMES
from merging.pipeline import merged_encoder
from merging.service.turns import Abandoned
from merging.encoders import load_encoder
from merging.probes import builtin_suite

TASKS = ["keyword", "speaker", "instrument_family", "pitch_class", "chord_quality"]


def stream_merge(url: str, **inputs) -> list:
    """The streamed answers of one release: its stages (progress lines between them left out)."""
    job = Client(url, verbose=False).submit(api_name="/merge", **inputs)
    job.result()
    return [output for output in job.outputs() if isinstance(output[3], dict) and "stage" in output[3]]


def test_a_merge_answers_with_a_quick_estimate_then_refines_to_the_benchmarks_full_suite(app_server, lab_models):
    url, _ = app_server
    outputs = stream_merge(url, method="linear", alpha=0.31)  # a merge no other test scored (a scored one is served as it is)
    summaries = [output[3] for output in outputs]
    stages = [summary["stage"] for summary in summaries]
    # before the inputs' full-suite scores are known, the first answer is the subset's own scores, said so on the page
    assert stages[0] in ("uncorrected", "quick") and "quick" in stages and stages[-1] == "full"
    if stages[0] == "uncorrected":
        assert "uncorrected: the scores on these clips" in outputs[0][0]
    first = stages.index("quick")
    assert "stage: quick" in outputs[first][0] and "stage: full suite" in outputs[-1][0]
    quick, full = summaries[first], summaries[-1]
    for summary in (quick, full):
        assert set(summary["intervals"]) == {*TASKS, "speech_avg", "music_avg", "avg"}
        for name, (low, high) in summary["intervals"].items():
            value = summary["scores"][name] if name in TASKS else summary[name]
            assert 0 <= low <= value <= high <= 100
        assert set(summary["test_clips"]) == set(TASKS)
    # the quick stage's size follows this machine's speed: at its largest a small task's test split may be whole
    assert quick["clips"] < full["clips"] and all(quick["test_clips"][t] <= full["test_clips"][t] for t in TASKS)
    assert full["test_clips"] == {t: len(task.test) for t, task in zip(TASKS, builtin_suite().tasks)}

    speech, music = (load_encoder(lab_models / MODEL_NAMES[role]) for role in ("speech", "music"))
    benchmark = builtin_suite().score(merged_encoder("linear", {"speech": speech, "music": music}, alpha=0.31), seed=0)
    assert full["scores"] == {t: round(v, 2) for t, v in benchmark.accuracy.items()}


def test_the_bars_carry_error_bars_and_test_clip_counts(app_server):
    url, _ = app_server
    first = stream_merge(url, method="linear", alpha=0.61)[0]
    bars = json.loads(first[1]["plot"])
    merged = next(trace for trace in bars["data"] if trace["name"] == "merged")
    assert len(merged["error_y"]["array"]) == len(TASKS)
    assert all("n=" in text for text in merged["text"])
    curve = json.loads(first[2]["plot"])
    star = curve["data"][-1]
    assert star["marker"]["symbol"] == "star" and "error_x" in star and "error_y" in star


def test_a_newer_merge_of_the_same_person_stops_the_running_refinement(app_server):
    from merging.service.session import LabSession

    _, service = app_server
    lab, scoring = service.lab, service.scoring
    recipe = lab.merge(LabSession(), lab.default_sources(), "linear", {"alpha": 0.2}).merged.recipe
    older = scoring.stream(recipe, scoring.lease("someone"))
    next(older)
    newer = scoring.stream(recipe, scoring.lease("someone"))
    next(newer)
    elsewhere = scoring.stream(recipe, scoring.lease("someone else"))
    next(elsewhere)  # another person's merge stops nobody's
    with pytest.raises(Abandoned):
        list(older)
    assert [scores.stage for _, scores in newer if scores is not None][-1] == "full"


def test_a_recipe_scored_once_is_served_to_the_next_session_without_computing(app_server, monkeypatch):
    from merging.service.session import LabSession

    _, service = app_server
    lab, scoring = service.lab, service.scoring
    recipe = lab.merge(LabSession(), lab.default_sources(), "linear", {"alpha": 0.35}).merged.recipe
    stages = [scores for _, scores in scoring.stream(recipe, scoring.lease("first visitor")) if scores is not None]
    assert stages[-1].stage == "full"
    again = lab.merge(LabSession(), lab.default_sources(), "linear", {"alpha": 0.35, "layer_alphas": None})
    assert again.merged.recipe.key == recipe.key  # an unset default names the same merge
    monkeypatch.setattr(lab, "loaded", lambda recipe: pytest.fail("a scored recipe was computed again"))
    served = [scores for _, scores in scoring.stream(again.merged.recipe, scoring.lease("second visitor"))
              if scores is not None]
    assert [s.stage for s in served] == ["full"] and served[0].accuracy == stages[-1].accuracy


def test_the_inputs_full_suite_scores_can_start_before_the_first_release(app_server, monkeypatch):
    import threading

    _, service = app_server
    lab, scoring = service.lab, service.scoring
    speech, music = lab.default_sources()["speech"], lab.default_sources()["music"]
    started = scoring.prefetch(speech, music)
    assert len(started) == 2 and scoring.prefetch(music, speech) == started[::-1]  # once per encoder
    parents = [job.result(timeout=600) for job in started]
    assert scoring.parent(speech) is parents[0] and scoring.parent(music) is parents[1]  # the release finds them ready
    uncaught = []
    monkeypatch.setattr(threading, "excepthook", uncaught.append)
    bad = scoring.prefetch("no-such-encoder")[0]
    assert isinstance(bad.exception(timeout=60), Exception) and uncaught == []  # left for its release to report


def test_a_second_merge_is_compared_with_the_persons_last_one_and_with_both_inputs(app_server):
    url, _ = app_server
    client = Client(url, verbose=False)  # one visitor: one session
    runs = []
    for alpha in (0.42, 0.58):
        job = client.submit(api_name="/merge", method="linear", alpha=alpha)
        job.result()
        runs.append([output for output in job.outputs() if isinstance(output[3], dict) and "stage" in output[3]])
    first, second = runs[0][-1][3], runs[1][-1][3]
    assert first["stage"] == second["stage"] == "full"
    assert "previous" not in first["compared"] and "previous" in second["compared"]
    for target in ("previous", "speech_input", "music_input"):
        for name, (value, low, high) in second["compared"][target].items():
            assert low <= value <= high
    # at the full suite both merges are scored on the same clips: the difference is the two averages' difference
    for name in ("avg", "speech_avg", "music_avg"):
        assert second["compared"]["previous"][name][0] == pytest.approx(second[name] - first[name], abs=0.02)
    assert "against your last merge" in runs[1][-1][0]
