import json

import numpy as np
import pytest

from merging.benchmark import (ADDITION_GRID, benchmark_rows, difference, find_models, load_rows, markdown_table,
                               task_vector_methods, write_json)
from merging.catalogue import MODEL_NAMES
from merging.cli import write_sweep
from merging.tradeoff import ALPHA_GRID as DEFAULT_ALPHAS, LAMBDA_GRID
from merging.calibration import synthetic_signals
from merging.probes import ProbeSuite, ProbeTask
from merging.stats import average_interval, difference_interval
from tiny import tiny_config, tiny_model
from test_cli import save


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    for seed, (role, name) in enumerate(MODEL_NAMES.items()):
        layers = 1 if role.startswith("student") else 2
        save(tiny_model(tiny_config(num_hidden_layers=layers), seed=seed), root / name)
    return root


def small_suite():
    clips = synthetic_signals(24, seconds=0.25)
    idx = list(range(24))
    labels = [i % 3 for i in idx]  # the signal kind (chirp, harmonic, noise): learnable
    def task(name, domain):
        return ProbeTask(name, domain, ("chirp", "tone", "noise"), tuple(idx[:16]), tuple(labels[:16]), tuple(idx[16:]), tuple(labels[16:]))
    return ProbeSuite(clips, [task("keyword", "speech"), task("pitch_class", "music")])


def test_table_has_every_row_and_column_and_json_parses(models_dir, tmp_path):
    models = find_models([models_dir])
    assert set(models) == set(MODEL_NAMES)
    rows = benchmark_rows(small_suite(), models, alphas=(0.0, 0.1, 0.5), calibration=synthetic_signals(4, seconds=0.25),
                          lambdas=(0.5, 0.5), log=lambda _: None)
    names = [row.name for row in rows]
    assert names == ["speech encoder", "music encoder", "random init", "linear@0", "linear@0.1", "linear@0.5",
                     "permute@0", "permute@0.1", "permute@0.5", "task_arithmetic@0.5/0.5", "ties@0.5/0.5",
                     "dare@0.5/0.5", "drm@0.5/0.5", "multi-teacher student", "speech_ft@0.25"]
    table = markdown_table(rows)
    assert table.splitlines()[0] == "| model | keyword | pitch_class | speech avg | music avg | avg |"
    assert len(table.splitlines()) == 2 + len(rows)
    # linear@0 is the speech encoder itself: identical scores
    assert rows[3].scores.accuracy == rows[0].scores.accuracy
    write_json(rows, tmp_path / "b.json")
    data = json.loads((tmp_path / "b.json").read_text())
    assert {"name", "method", "alpha", "params", "scores", "speech_avg", "music_avg", "avg"} <= set(data["rows"][0])
    assert data["rows"][5]["method"] == "linear" and data["rows"][5]["alpha"] == 0.5
    assert data["rows"][10]["params"] == {"lambda_speech": 0.5, "lambda_music": 0.5}
    loaded = load_rows(tmp_path / "b.json")
    assert [(r.name, r.params, r.scores) for r in loaded] == [(r.name, r.params, r.scores) for r in rows]
    assert difference(loaded[3], loaded[0]) == (0.0, (0.0, 0.0))  # linear@0 against the speech encoder
    gap, (low, high) = difference(loaded[1], loaded[2], "music")
    assert gap == pytest.approx(loaded[1].scores.average("music") - loaded[2].scores.average("music"))
    assert low <= gap <= high and (low, high) == difference_interval(
        {"pitch_class": loaded[1].scores.correct["pitch_class"]}, {"pitch_class": loaded[2].scores.correct["pitch_class"]},
        loaded[1].scores.clips)
    json_path, html_path = write_sweep(rows, tmp_path / "sweep.json")
    curves = json.loads(json_path.read_text())
    assert [p["alpha"] for p in curves["permute"]] == [0.0, 0.1, 0.5] and html_path.stat().st_size > 1000


def test_every_row_carries_sane_intervals_in_the_table_and_the_json(models_dir, tmp_path):
    models = {k: v for k, v in find_models([models_dir]).items() if k in ("speech", "music", "student_multi")}
    suite = small_suite()
    rows = benchmark_rows(suite, models, alphas=(0.5,), calibration=None, log=lambda _: None)
    write_json(rows, tmp_path / "b.json")
    data = json.loads((tmp_path / "b.json").read_text())
    table = markdown_table(rows).splitlines()[2:]
    for row, line, entry in zip(rows, table, data["rows"]):
        assert entry["test_clips"] == {"keyword": 8, "pitch_class": 8}
        for task, hits in entry["correct"].items():  # per-clip results behind each accuracy
            assert len(hits) == 8 and 100 * hits.count("1") / 8 == pytest.approx(entry["scores"][task])
        for key, value in (("avg_ci", "avg"), ("speech_avg_ci", "speech_avg"), ("music_avg_ci", "music_avg")):
            low, high = entry[key]
            assert 0 <= low <= entry[value] <= high <= 100
            assert f"{entry[value]:.1f} [{low:.1f}, {high:.1f}]" in line
        # bootstrap of the per-clip results: a domain's interval is its one task's here, the overall one is over both
        correct = {task: [c == "1" for c in hits] for task, hits in entry["correct"].items()}
        clips = {task: ids for task, ids in data["test_clip_ids"].items()}
        for task in correct:
            assert entry["scores_ci"][task] == list(average_interval({task: correct[task]}, clips))
        assert entry["speech_avg_ci"] == entry["scores_ci"]["keyword"]
        assert entry["music_avg_ci"] == entry["scores_ci"]["pitch_class"]
        assert entry["avg_ci"] == list(average_interval(correct, clips)) == list(row.scores.interval())
    # 8 clips per task: a task that is neither all right nor all wrong has a wide interval
    mixed = [e for e in data["rows"] if 0 < e["scores"]["keyword"] < 100]
    assert mixed and all(e["scores_ci"]["keyword"][1] - e["scores_ci"]["keyword"][0] >= 12.5 for e in mixed)


def test_scores_are_reproducible_with_a_fixed_seed(models_dir):
    models = {k: v for k, v in find_models([models_dir]).items() if k in ("speech", "music")}
    first = benchmark_rows(small_suite(), models, alphas=(0.5,), calibration=None, log=lambda _: None)
    second = benchmark_rows(small_suite(), models, alphas=(0.5,), calibration=None, log=lambda _: None)
    assert [r.scores.accuracy for r in first] == [r.scores.accuracy for r in second]
    assert [r.as_dict() for r in first] == [r.as_dict() for r in second]
    assert np.isfinite([r.scores.average() for r in first]).all()


def test_lambda_grids_interpolate_and_default_alphas_hold_the_papers_point():
    assert DEFAULT_ALPHAS[:2] == (0.0, 0.1) and 0.5 in DEFAULT_ALPHAS
    assert len(LAMBDA_GRID) == 5 and all(ls + lm == pytest.approx(1) for ls, lm in LAMBDA_GRID)
    assert all(ls == lm for ls, lm in ADDITION_GRID)
    assert task_vector_methods() == ["task_arithmetic", "ties", "dare", "drm"]


def test_every_task_vector_method_gets_its_lambdas_from_the_validation_split_never_the_test_split(models_dir, monkeypatch):
    suite = small_suite()
    train = {t.name: set(t.train) for t in suite.tasks}
    test = {t.name: t.test for t in suite.tasks}
    scored = []  # per score call: "test" (the real test split) or "validation" (a held-out part of the training clips)
    original = ProbeSuite.score

    def spy(self, encoder, seed=0, probes=None):
        if all(task.test == test[task.name] for task in self.tasks):
            scored.append("test")
        else:
            assert all(set(task.test) <= train[task.name] and not set(task.test) & set(task.train) for task in self.tasks)
            scored.append("validation")
        return original(self, encoder, seed, probes)

    monkeypatch.setattr(ProbeSuite, "score", spy)
    models = {k: v for k, v in find_models([models_dir]).items() if k.startswith("student_")}
    lines = []
    rows = benchmark_rows(suite, models, calibration=None, log=lines.append)
    methods = task_vector_methods()
    grids = [len(LAMBDA_GRID), len(ADDITION_GRID)] + [len(LAMBDA_GRID)] * (len(methods) - 1)
    assert scored == [kind for n in grids for kind in ["validation"] * n + ["test"]] + ["test"]  # + the multi-teacher row
    chosen = {line.split(" λ on")[0].strip(): line.rsplit("-> ", 1)[1] for line in lines if "validation split" in line}
    assert methods[0] == "task_arithmetic" and list(chosen) == [methods[0], "task addition (λs = λm)", *methods[1:]]
    addition = rows.pop(1)
    assert addition.name == f"task_addition@{chosen['task addition (λs = λm)']}" and addition.method == "task_arithmetic"
    assert (addition.params["lambda_speech"], addition.params["lambda_music"]) in ADDITION_GRID
    assert [row.name for row in rows] == [f"{m}@{chosen[m]}" for m in methods] + ["multi-teacher student"]
    for row in rows[:len(methods)]:
        pair = (row.params["lambda_speech"], row.params["lambda_music"])
        assert pair in LAMBDA_GRID and row.name == f"{row.method}@{pair[0]:g}/{pair[1]:g}"


def test_a_task_vector_method_in_the_registry_gets_a_row(models_dir, monkeypatch):
    from merging.methods import METHODS

    monkeypatch.setitem(METHODS, "toy_vectors", METHODS["task_arithmetic"])  # base, speech, music under a new name
    models = {k: v for k, v in find_models([models_dir]).items() if k.startswith("student_") and k != "student_multi"}
    rows = benchmark_rows(small_suite(), models, calibration=None, lambdas=(0.7, 0.3), log=lambda _: None)
    assert rows[-1].name == "toy_vectors@0.7/0.3" and rows[-1].method == "toy_vectors"
    assert rows[-1].scores.accuracy == rows[0].scores.accuracy  # the same merge as task_arithmetic@0.7/0.3
