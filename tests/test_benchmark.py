import json

import numpy as np
import pytest

from merging.benchmark import MODEL_NAMES, benchmark_rows, find_models, markdown_table, write_json, write_sweep
from merging.calibration import synthetic_signals
from merging.probes import ProbeSuite, ProbeTask
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
    rows = benchmark_rows(small_suite(), models, alphas=(0.0, 0.5), calibration=synthetic_signals(4, seconds=0.25),
                          lambdas=(0.5, 0.5), log=lambda _: None)
    names = [row.name for row in rows]
    assert names == ["speech encoder", "music encoder", "random init", "linear@0", "linear@0.5", "permute@0", "permute@0.5",
                     "task_arithmetic@0.5/0.5", "ties", "dare", "drm", "multi-teacher student", "speech_ft@0.25"]
    table = markdown_table(rows)
    assert table.splitlines()[0] == "| model | keyword | pitch_class | speech avg | music avg | avg |"
    assert len(table.splitlines()) == 2 + len(rows)
    # linear@0 is the speech encoder itself: identical scores
    assert rows[3].scores.accuracy == rows[0].scores.accuracy
    write_json(rows, tmp_path / "b.json")
    data = json.loads((tmp_path / "b.json").read_text())
    assert {"name", "method", "alpha", "scores", "speech_avg", "music_avg", "avg"} <= set(data["rows"][0])
    assert data["rows"][4]["method"] == "linear" and data["rows"][4]["alpha"] == 0.5
    json_path, html_path = write_sweep(rows, tmp_path / "sweep.json")
    curves = json.loads(json_path.read_text())
    assert [p["alpha"] for p in curves["permute"]] == [0.0, 0.5] and html_path.stat().st_size > 1000


def test_scores_are_reproducible_with_a_fixed_seed(models_dir):
    models = {k: v for k, v in find_models([models_dir]).items() if k in ("speech", "music")}
    first = benchmark_rows(small_suite(), models, alphas=(0.5,), calibration=None, log=lambda _: None)
    second = benchmark_rows(small_suite(), models, alphas=(0.5,), calibration=None, log=lambda _: None)
    assert [r.scores.accuracy for r in first] == [r.scores.accuracy for r in second]
    assert np.isfinite([r.scores.average() for r in first]).all()


def test_task_arithmetic_lambdas_are_chosen_on_the_validation_split_not_the_test_split(models_dir):
    from merging.benchmark import LAMBDA_GRID

    suite = small_suite()
    validation = suite.validation()
    for task, held in zip(suite.tasks, validation.tasks):
        assert set(held.test) <= set(task.train) and not set(held.test) & set(held.train)
        assert not set(held.test) & set(task.test) and len(held.train) + len(held.test) == len(task.train)
    models = {k: v for k, v in find_models([models_dir]).items() if k.startswith("student_")}
    lines = []
    rows = benchmark_rows(suite, models, calibration=None, log=lines.append)
    chosen = [line for line in lines if "validation split" in line]
    assert len(chosen) == 1
    lam = float(chosen[0].rsplit("-> ", 1)[1])
    assert lam in LAMBDA_GRID and rows[0].name == f"task_arithmetic@{lam:g}/{lam:g}"
