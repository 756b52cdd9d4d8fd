"""Every parameter of a registered method is a control on the page and a named field of /merge: a toy method with a
parameter of each kind, registered before the app is built, driven through the running app."""
from __future__ import annotations

import json

import httpx
import pytest
from gradio_client import Client

from merging.methods import linear
from merging.registry import METHODS, Param, register

TOY_PARAMS = (
    Param("gain", 0.5, "how far toward the music encoder, per step", "gain", low=0, high=2, step=0.25),
    Param("steps", 2, "how many steps of gain", "steps", kind="int", low=1, high=5),
    Param("mode", "blend", "'blend' the two, or 'music' to take the music encoder", "mode", kind="choice",
          choices=("blend", "music")),
    Param("flip", False, "blend from the music side instead", "flip", kind="flag"),
    Param("layer_gains", None, "one weight per transformer layer", "per-layer gain", kind="floats", low=0, high=1),
)


def toy(speech, music, *, gain, steps, mode, flip, layer_gains):
    """A blend whose weight comes from a parameter of each kind (not placed on the speech–music axis)."""
    alpha = 1.0 if mode == "music" else min(gain * steps / 10, 1.0)
    return linear(speech, music, alpha=1 - alpha if flip else alpha, layer_alphas=layer_gains)


@pytest.fixture(scope="module")
def toy_app(lab_models):
    from conftest import served
    from merging.service import LabConfig, Service

    register("toy", "a toy blend with a parameter of each kind", params=TOY_PARAMS)(toy)
    service = Service.start(LabConfig(models_dir=lab_models, calibration_limit=16, fit_iterations=10), budget_seconds=0.25)
    try:
        with served(service) as url:
            yield url
    finally:
        METHODS.pop("toy")


def component(url: str, elem_id: str) -> dict:
    config = httpx.get(f"{url}config").json()
    return next(c for c in config["components"] if c.get("props", {}).get("elem_id") == elem_id)


def test_each_parameter_is_a_control_of_its_kind_with_the_registrys_range_and_label(toy_app):
    gain, steps, mode, flip, layers = (component(toy_app, f"param-{p.name}") for p in TOY_PARAMS)
    assert gain["type"] == "slider" and (gain["props"]["minimum"], gain["props"]["maximum"], gain["props"]["step"]) == (0, 2, 0.25)
    assert steps["type"] == "slider" and steps["props"]["step"] == 1
    assert mode["type"] == "radio" and [c[0] for c in mode["props"]["choices"]] == ["blend", "music"]
    assert flip["type"] == "checkbox" and layers["type"] == "textbox"
    assert gain["props"]["label"] == "gain: how far toward the music encoder, per step"
    assert not gain["props"]["visible"]  # the page starts with its default method, which has no gain
    parameters = {p["parameter_name"] for p in Client(toy_app, verbose=False).view_api(
        return_format="dict")["named_endpoints"]["/merge"]["parameters"]}
    assert {"method", "speech", "music", *(p.name for p in TOY_PARAMS), "alpha", "density", "drop"} <= parameters


def test_changing_method_shows_only_its_parameters():
    import app_merge

    shown = {name: app_merge.control_update(name, "toy", "permute") for name in ("gain", "mode", "alpha", "density")}
    assert shown["gain"]["visible"] and shown["mode"]["visible"] and shown["gain"]["value"] == 0.5
    assert not shown["alpha"]["visible"] and not shown["density"]["visible"]


def test_a_merge_with_non_default_values_runs_and_its_summary_records_them(toy_app):
    client = Client(toy_app, verbose=False)
    job = client.submit(method="toy", gain=1.5, steps=3, mode="blend", flip=True, layer_gains="0.2, 0.4",
                        api_name="/merge")
    job.result()
    stages = [output for output in job.outputs() if isinstance(output[3], dict) and "stage" in output[3]]
    summary = stages[-1][3]
    assert summary["method"] == "toy" and summary["stage"] == "full"
    assert summary["params"] == {"gain": 1.5, "steps": 3, "mode": "blend", "flip": True, "layer_gains": [0.2, 0.4]}
    assert summary["position"] is None  # the toy does not say where it sits between speech and music
    assert "no position between its inputs" in stages[0][0]
    bars = json.loads(stages[-1][1]["plot"])
    assert [trace["name"] for trace in bars["data"]] == ["speech", "merged", "music"]
    with pytest.raises(Exception, match="steps must be an integer"):
        client.predict(method="toy", steps=2.5, api_name="/merge")
