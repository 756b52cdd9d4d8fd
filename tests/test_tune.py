"""The tuner: a search finds a known per-layer optimum, never reads the test split, resumes its study, stops within one
evaluation when cancelled, and splits its budget between workers sharing a study; the CLI writes the front and the
chosen encoder; the service searches in background turns, behind people's requests."""
from __future__ import annotations

import json
import multiprocessing
import threading
import time
from collections.abc import Sequence

import numpy as np
import optuna
import pytest

from merging.encoders import Encoder
from merging.probes import ProbeSuite, ProbeTask
from merging.state import MergeError
from merging.tune import Budget, Merges, Probes, Search, averages, space
from test_live import tone_suite
from tiny import tiny_model

SPEECH_BEST = np.array([0.1, 0.0, 0.7])  # toy optimum of the speech score: α outside the layers, then per layer
MUSIC_BEST = np.array([0.5, 1.0, 0.3])


def weights(arguments: dict) -> np.ndarray:
    return np.array([arguments["alpha"], *arguments["layer_alphas"]])


def toy(arguments: dict, pause: float = 0.0) -> tuple[float, float]:
    """Each score falls off quadratically from its own per-layer optimum: at balance b (the weight on speech) the best
    weights are b·SPEECH_BEST + (1 − b)·MUSIC_BEST, which no single α comes near."""
    time.sleep(pause)
    w = weights(arguments)
    return 100 - 100 * float(np.mean((w - SPEECH_BEST) ** 2)), 100 - 100 * float(np.mean((w - MUSIC_BEST) ** 2))


def toy_space():
    return space("permute", 2)


def trials(search: Search) -> list[tuple]:
    return [(c.number, tuple(sorted((k, str(v)) for k, v in c.arguments.items())), c.speech, c.music)
            for c in search.candidates()]


def test_the_search_finds_a_known_per_layer_optimum():
    search = Search(toy_space(), toy, seed=0)
    progress = search.run(Budget(20))
    assert progress.evaluations == 20 and progress.stopped == "budget"
    best = max(search.front(), key=lambda c: 0.5 * c.speech + 0.5 * c.music)
    np.testing.assert_allclose(weights(best.arguments), (SPEECH_BEST + MUSIC_BEST) / 2, atol=0.05)


def test_a_space_spans_the_weights_a_method_takes():
    assert toy_space().names() == ("alpha", "alpha_0", "alpha_1")
    pairs = space("task_arithmetic", 2)
    assert pairs.arguments(dict.fromkeys(pairs.names(), 0.25)) == {
        "lambda_speech": 0.25, "lambda_music": 0.25, "layer_lambdas": [(0.25, 0.25)] * 2}
    assert space("ties", 2).names() == ("lambda_speech", "lambda_music")  # no per-layer λ: one pair
    with pytest.raises(MergeError, match="cannot be tuned"):
        space("speech_ft", 2)
    with pytest.raises(MergeError, match="whole number of evaluations"):
        Budget(0)


# -- the test split ------------------------------------------------------------------------------------

class Guarded(list):
    """A suite's clips, where reading a test clip fails."""

    def __init__(self, clips: Sequence[np.ndarray], test: set[int]) -> None:
        super().__init__(clips)
        self.test = test

    def __getitem__(self, index):
        if index in self.test:
            raise AssertionError(f"test clip {index} was read")
        return super().__getitem__(index)


def poisoned(suite: ProbeSuite) -> ProbeSuite:
    """The same suite with every test label shifted to another class and reading a test clip an error."""
    test = {i for task in suite.tasks for i in task.test}
    tasks = [ProbeTask(t.name, t.domain, t.labels, t.train, t.train_y, t.test,
                       tuple((y + 1) % len(t.labels) for y in t.test_y)) for t in suite.tasks]
    return ProbeSuite(Guarded(suite.clips, test), tasks, suite.sample_rate)


def tiny_pair() -> Merges:
    return Merges({role: Encoder(tiny_model(seed=seed), 16000, False, role, role)
                   for role, seed in (("speech", 0), ("music", 1))})


def searched(suite: ProbeSuite) -> tuple[list[tuple], list]:
    merges, probes = tiny_pair(), Probes(suite, per_class=2, iterations=10)
    probes.inputs(*merges.ends())
    search = Search(space("linear", 2), lambda a: averages(probes.quick(merges.running("linear", a))),
                    seed=0, sampler_name="tpe")
    search.run(Budget(9))
    full = [averages(probes.validated(merges.running("linear", c.arguments))) for c in search.front()]
    return trials(search), full


def test_the_search_never_reads_the_test_split():
    suite = tone_suite()
    clean = searched(suite)
    assert searched(poisoned(suite)) == clean
    with pytest.raises(AssertionError, match="test clip"):  # the guard does catch a read
        Probes(poisoned(suite)).checked(tiny_pair().running("linear", {"alpha": 0.5}))


# -- the study -----------------------------------------------------------------------------------------

def test_a_resumed_search_continues_its_study(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    first = Search(toy_space(), toy, seed=0, sampler_name="tpe", storage=storage, name="toy")
    first.run(Budget(5))
    before = trials(first)
    again = Search(toy_space(), toy, seed=0, sampler_name="tpe", storage=storage, name="toy")
    progress = again.run(Budget(9))
    assert not again.created and first.created
    assert (progress.evaluations, progress.run) == (9, 4)
    assert trials(again)[:5] == before
    with pytest.raises(MergeError, match="made with seed 0"):
        Search(toy_space(), toy, seed=1, sampler_name="tpe", storage=storage, name="toy")


def test_cancel_stops_within_one_evaluation():
    cancel, started = threading.Event(), []

    def evaluate(arguments):
        started.append(time.monotonic())
        if len(started) == 3:
            threading.Timer(0.05, cancel.set).start()  # someone cancels while the third evaluation runs
        return toy(arguments, pause=0.3)

    progress = Search(toy_space(), evaluate, sampler_name="tpe").run(Budget(50), cancel=cancel)
    assert (progress.stopped, progress.evaluations, len(started)) == ("cancelled", 3, 3)


def test_an_evaluation_that_stops_on_cancel_is_not_counted():
    cancel = threading.Event()

    def evaluate(arguments):
        if len(search.candidates()) == 2:
            cancel.set()
            raise RuntimeError("stopped between two units of work")  # as a turn does once the search is cancelled
        return toy(arguments)

    search = Search(toy_space(), evaluate, sampler_name="tpe")
    progress = search.run(Budget(50), cancel=cancel)
    states = [t.state for t in search.study.get_trials()]
    assert progress.stopped == "cancelled" and progress.evaluations == 2
    assert states.count(optuna.trial.TrialState.FAIL) == 1


def work_in(storage: str, worker: int, budget: int) -> None:
    Search(toy_space(), lambda a: toy(a, pause=0.1), seed=0, sampler_name="tpe", storage=storage, name="shared",
           worker=worker).run(Budget(budget))


def test_two_workers_share_one_study_and_split_its_budget(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    Search(toy_space(), toy, seed=0, sampler_name="tpe", storage=storage, name="shared")  # created, grid queued
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=work_in, args=(storage, w, 16)) for w in (0, 1)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(120)
        assert process.exitcode == 0
    study = optuna.load_study(study_name="shared", storage=storage)
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(done) == 16
    assert {t.user_attrs["worker"] for t in done} == {0, 1}
    assert len({tuple(sorted(t.params.items())) for t in done}) == 16  # no point evaluated twice
    assert len(study.get_trials(states=(optuna.trial.TrialState.FAIL,))) <= 2  # at most one budget check each


# -- the command line -------------------------------------------------------------------------------

def test_cli_tune_writes_the_front_its_check_and_the_chosen_encoder(tmp_path, lab_models, monkeypatch, capsys):
    import merging.probes
    from merging.cli import main
    from merging.catalogue import MODEL_NAMES

    monkeypatch.setattr(merging.probes, "builtin_suite", lambda: tone_suite())
    out = tmp_path / "tuned"
    code = main(["tune", "--speech", str(lab_models / MODEL_NAMES["speech"]), "--music",
                 str(lab_models / MODEL_NAMES["music"]), "--method", "permute", "--budget", "8", "--sampler", "tpe",
                 "--per-class", "2", "--calib-limit", "8", "--balance", "0.5", "--out", str(out)])
    assert code == 0
    front = json.loads((out / "front.json").read_text())
    assert front["search"]["evaluations"] == 8 and front["search"]["library"].startswith("optuna")
    point = front["front"][0]
    assert len(point["arguments"]["layer_alphas"]) == 2
    assert {"validation", "test"} <= set(point) and len(point["test"]["intervals"]["speech_avg"]) == 2
    at_half = next(b for b in front["balances"] if b["balance"] == 0.5)
    assert {v["baseline"].split()[0] for v in at_half["versus"]} == {"linear", "permute"}
    assert all(len(v["difference_interval"]) == 2 for v in at_half["versus"])
    record = json.loads((out / "merged" / "merge_config.json").read_text())
    assert record["method"] == "permute" and record["search"]["sampler"] == "tpe"
    assert record["search"]["chosen"]["arguments"] == record["arguments"]
    assert record["search"]["budget"]["evaluations"] == 8 and record["search"]["balance"] == 0.5
    assert "balance 0.5" in capsys.readouterr().out


def test_cli_tune_refuses_bad_input_in_one_line(tmp_path, lab_models, capsys):
    from merging.cli import main
    from merging.catalogue import MODEL_NAMES

    speech, music = (str(lab_models / MODEL_NAMES[r]) for r in ("speech", "music"))
    assert main(["tune", "--speech", speech, "--music", music, "--method", "ties", "--budget", "3",
                 "--out", str(tmp_path / "x")]) == 2
    assert main(["tune", "--speech", speech, "--music", music, "--method", "linear", "--budget", "3",
                 "--balance", "2", "--out", str(tmp_path / "y")]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert errors == ["error: method 'ties' needs --base", "error: --balance is the weight on speech, between 0 and 1, not 2"]
    assert not (tmp_path / "y").exists()


def test_cli_tune_with_nothing_evaluated_says_so_and_checks_nothing(tmp_path, lab_models, capsys):
    from merging.cli import main
    from merging.catalogue import MODEL_NAMES

    speech, music = (str(lab_models / MODEL_NAMES[r]) for r in ("speech", "music"))
    assert main(["tune", "--speech", speech, "--music", music, "--method", "linear", "--budget", "3",
                 "--seconds", "1e-9", "--out", str(tmp_path / "z")]) == 0
    assert "stopped: time; no evaluation yet" in capsys.readouterr().out
    assert not (tmp_path / "z" / "front.json").exists()


# -- the service ---------------------------------------------------------------------------------------

@pytest.fixture
def page(lab_models, monkeypatch):
    """A lab, its scorer on the small tone suite and its searches; an aligned session of the built-in pair."""
    import merging.service.scoring
    from merging.service.config import LabConfig
    from merging.service.lab import Lab
    from merging.service.scoring import Scoring
    from merging.service.session import LabSession
    from merging.service.tuning import Tuning

    monkeypatch.setattr(merging.service.scoring, "builtin_suite", lambda: tone_suite())
    lab = Lab(LabConfig(models_dir=lab_models, calibration_limit=16, fit_iterations=10))
    scoring = Scoring(lab, budget_seconds=0.1)
    sources = lab.default_sources()
    session = lab.align(LabSession(), sources["speech"], sources["music"])
    return lab, scoring, Tuning(lab, scoring), session, sources


def finished(job, seconds: float = 180.0):
    deadline = time.monotonic() + seconds
    while not job.state.finished and time.monotonic() < deadline:
        job.wait(0.5)
    return job.state


def test_a_page_search_checks_its_front_on_the_full_suite_and_keeps_it_for_the_merge_panel(page):
    lab, scoring, tuning, session, sources = page
    state = finished(tuning.start("ann", session, sources, "permute", 8.0))
    assert state.phase == "done" and state.evaluations == 8
    assert state.front and all(t.point.stage == "full suite" and t.point.speech_interval for t in state.front)
    for point in state.front:
        recipe = lab.recipe(session, sources, "permute", point.arguments)
        assert 0 in scoring.book.stages(recipe)  # the merge panel answers it at once
        assert tuning.point("ann", point.number) == point
    with pytest.raises(MergeError, match="not on this search's front"):
        tuning.point("ann", 10_000)


def test_a_page_search_lets_people_go_first_and_stops_within_a_unit(page):
    lab, scoring, tuning, session, sources = page
    job = tuning.start("bob", session, sources, "linear", 400)
    while job.state.evaluations < 2 and not job.state.finished:
        job.wait(0.5)
    waits = []
    for _ in range(5):  # a person's request waits at most for the search's unit of work under way
        began = time.monotonic()
        with lab.runner.turn():
            waits.append(time.monotonic() - began)
        time.sleep(0.1)
    stopped_at = time.monotonic()
    tuning.stop("bob")
    state = finished(job, 10)
    assert max(waits) < 1.0, waits
    assert state.phase == "stopped" and time.monotonic() - stopped_at < 5 and state.front
    assert state.evaluations < 400


def test_a_page_search_refuses_bad_input_and_starts_nothing(page):
    lab, scoring, tuning, session, sources = page
    for method, evaluations, seconds, message in (("speech_ft", 5, None, "cannot be tuned"),
                                                  ("linear", 0, None, "evaluations: a whole number"),
                                                  ("linear", "many", None, "evaluations: a whole number"),
                                                  ("linear", 5, -1, "seconds: a number above 0"),
                                                  ("permute", 5, None, "needs the alignment")):
        owner_session = session if method != "permute" else type(session)()
        with pytest.raises(MergeError, match=message):
            tuning.start("cat", owner_session, sources, method, evaluations, seconds)
    assert tuning.job("cat") is None


# -- the page ------------------------------------------------------------------------------------------

def test_the_page_tunes_and_loads_a_front_point_into_the_merge_panel(app_server):
    from gradio_client import Client

    url, service = app_server
    client = Client(url, verbose=False)
    client.predict(api_name="/align")
    status, _, front, _ = client.predict(method="permute", evaluations=5, seconds=600, api_name="/tune")
    assert status.startswith("**done**") and front["evaluations"] == 5
    point = front["front"][0]
    assert point["stage"] == "full suite" and len(point["intervals"]["speech_avg"]) == 2
    method, *controls = client.predict(point["trial"], api_name="/tune_load")  # (the merge panel's state is not sent)
    layer_text = ", ".join(f"{v:g}" for v in point["arguments"]["layer_alphas"])  # the editor's text, read back exactly
    assert method == "permute"
    assert point["arguments"]["alpha"] in controls and layer_text in controls
    for evaluations, message in ((10_000, "greater than maximum value 400"), (7.5, "evaluations: a whole number")):
        with pytest.raises(Exception, match=message):
            client.predict(method="permute", evaluations=evaluations, seconds=600, api_name="/tune")
    assert client.predict(api_name="/tune_cancel").startswith("**")
