"""No work for people who left: visitors who close the page after their first answer leave the server idle, and a
cancelled release stops at once. Driven through the running app, each visitor in a process of its own."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest
from gradio_client import Client

VISITOR = r"""
import os, sys, time
from gradio_client import Client
url, alpha = sys.argv[1], float(sys.argv[2])
client = Client(url, verbose=False)
start = time.monotonic()
job = client.submit(method="linear", alpha=alpha, api_name="/merge")
while not any(isinstance(o[3], dict) and "stage" in o[3] for o in job.outputs()):
    if job.done():
        sys.exit("the release ended without an answer")
    time.sleep(0.01)
print(f"{time.monotonic() - start:.3f}", flush=True)
os._exit(0)  # as a closed tab: no goodbye
"""


@pytest.fixture(scope="module")
def quiet_app(lab_models):
    """The app with the inputs' full-suite scores computed (the warm state the first answers are measured in)."""
    from conftest import served
    from merging.service import LabConfig, Service

    service = Service.start(LabConfig(models_dir=lab_models, calibration_limit=16, fit_iterations=10))
    sources = service.lab.default_sources()
    for job in service.scoring.prefetch(sources["speech"], sources["music"]):
        job.result(timeout=600)
    with served(service) as url:
        yield url, service


def idle_after(service, seconds: float, quiet: float = 1.0) -> float:
    """Seconds until the runner has had nothing running or waiting for `quiet` seconds (fails after `seconds`)."""
    start = time.monotonic()
    calm_since = None
    while time.monotonic() - start < seconds:
        if service.lab.runner.busy():
            calm_since = None
        elif calm_since is None:
            calm_since = time.monotonic()
        elif time.monotonic() - calm_since >= quiet:
            return calm_since - start
        time.sleep(0.02)
    pytest.fail(f"the server was still computing {seconds:g} s after the visitors left")


def test_visitors_who_leave_after_their_first_answer_leave_the_server_idle(quiet_app):
    url, service = quiet_app
    answers, visitors = [], []
    for index in range(10):  # each arrives as the one before leaves, while that one's refinement would go on
        visitor = subprocess.Popen([sys.executable, "-c", VISITOR, url, f"{0.05 + 0.09 * index:.2f}"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = visitor.stdout.readline()
        assert line, visitor.communicate(timeout=60)[1][-500:]
        answers.append(float(line))
        visitors.append(visitor)
    for visitor in visitors:
        visitor.wait(timeout=60)
    left = idle_after(service, 10.0)
    assert max(answers) < 5.0, f"first answers {answers}"
    assert left < 10.0


def test_a_cancelled_release_is_answered_within_seconds_and_stops(quiet_app):
    url, service = quiet_app
    client = Client(url, verbose=False)
    job = client.submit(method="linear", alpha=0.47, api_name="/merge")
    deadline = time.monotonic() + 120
    while not any(isinstance(o[3], dict) and "stage" in o[3] for o in job.outputs()):
        assert time.monotonic() < deadline and not job.done()
        time.sleep(0.01)
    assert service.lab.runner.busy() or not job.done()  # refining
    start = time.monotonic()
    job.cancel()
    assert time.monotonic() - start < 3.0  # the unit under way ends first (under a second on a quiet machine)
    assert idle_after(service, 5.0, quiet=0.5) < 5.0
