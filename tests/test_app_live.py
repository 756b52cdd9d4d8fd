"""The /merge endpoint streams live scores: a quick estimate with intervals, then refined stages up to the full suite."""
from __future__ import annotations

import json

from gradio_client import Client

from merging.benchmark import MODEL_NAMES, _merged
from merging.encoders import load_encoder
from merging.probes import builtin_suite

TASKS = ["keyword", "speaker", "instrument_family", "pitch_class", "chord_quality"]


def stream_merge(url: str, **inputs) -> list:
    job = Client(url, verbose=False).submit(api_name="/merge", **inputs)
    job.result()
    return job.outputs()


def test_a_merge_answers_with_a_quick_estimate_then_refines_to_the_benchmarks_full_suite(app_server, lab_models):
    url, _ = app_server
    outputs = stream_merge(url, method="linear", alpha=0.3)
    summaries = [output[3] for output in outputs]
    assert summaries[0]["stage"] == "quick" and summaries[-1]["stage"] == "full"
    assert "stage: quick" in outputs[0][0] and "stage: full suite" in outputs[-1][0]
    quick, full = summaries[0], summaries[-1]
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
    benchmark = builtin_suite().score(_merged("linear", {"speech": speech, "music": music}, alpha=0.3), seed=0)
    assert full["scores"] == {t: round(v, 2) for t, v in benchmark.accuracy.items()}


def test_the_bars_carry_error_bars_and_test_clip_counts(app_server):
    url, _ = app_server
    first = stream_merge(url, method="linear", alpha=0.6)[0]
    bars = json.loads(first[1]["plot"])
    merged = next(trace for trace in bars["data"] if trace["name"] == "merged")
    assert len(merged["error_y"]["array"]) == len(TASKS)
    assert all("n=" in text for text in merged["text"])
    curve = json.loads(first[2]["plot"])
    star = curve["data"][-1]
    assert star["marker"]["symbol"] == "star" and "error_x" in star and "error_y" in star


def test_a_newer_merge_of_the_same_person_stops_the_running_refinement(app_server):
    from merging.service.live_scores import LiveScoring
    from merging.service.session import LabSession

    _, lab = app_server
    scoring = LiveScoring(lab)
    recipe = lab.merge(LabSession(), lab.default_sources(), "linear", alpha=0.2).merged.recipe
    older = scoring.stream(recipe, 0.2, "someone")
    next(older)
    newer = scoring.stream(recipe, 0.2, "someone")
    next(newer)
    elsewhere = scoring.stream(recipe, 0.2, "someone else")
    next(elsewhere)  # another person's merge stops nobody's
    assert list(older) == []
    assert [scores.stage for _, scores in newer if scores is not None][-1] == "full"


def test_the_inputs_full_suite_scores_can_start_before_the_first_release(app_server, monkeypatch):
    import threading

    from merging.service.live_scores import LiveScoring

    _, lab = app_server
    scoring = LiveScoring(lab)
    speech, music = lab.default_sources()["speech"], lab.default_sources()["music"]
    started = scoring.prefetch(speech, music)
    assert len(started) == 2 and scoring.prefetch(music, speech) == []  # once per encoder
    for thread in started:
        thread.join(timeout=600)
    checksum = lab.registry.checksum(speech)
    assert checksum in scoring.live._parents and lab.registry.checksum(music) in scoring.live._parents
    assert scoring.parent(speech) is scoring.live._parents[checksum]  # the release finds them ready
    uncaught = []
    monkeypatch.setattr(threading, "excepthook", uncaught.append)
    bad = scoring.prefetch("no-such-encoder")[0]
    bad.join(timeout=60)
    assert not bad.is_alive() and uncaught == []  # a bad key fails quietly there, for its release to report
