"""The app as a person uses it, in headless Chromium driven by Playwright: align, look, slide, listen, probe."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from playwright.sync_api import expect, sync_playwright

from conftest import UPLOAD_LIMIT
from merging.catalogue import MODEL_NAMES

CHROMIUM = os.environ.get("MERGE_LAB_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
CLIP = Path(__file__).resolve().parent.parent / "assets" / "audio" / "examples" / "speech_over_music_yes_synth_lead.ogg"
SLOW = 120_000  # ms: the alignment and first merges share 2 cores with the rest of the suite


@pytest.fixture(scope="module")
def page(app_server):
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(app_server[0], wait_until="load")
        yield page
        browser.close()


def test_page_loads_with_the_chosen_encoders(page):
    table = page.locator("#encoder-table")
    expect(table).to_contain_text(MODEL_NAMES["speech"], timeout=SLOW)
    expect(table).to_contain_text("16000 Hz")
    expect(page.locator("#encoder-problems")).not_to_contain_text("⚠")


def test_alignment_renders_heatmaps_before_and_after(page):
    page.click("#align-button")
    expect(page.locator("#align-status")).to_contain_text("mean matched correlation", timeout=SLOW)
    expect(page.locator("#heatmap .hm image")).to_have_count(2, timeout=SLOW)  # before | after
    titles = page.locator("#heatmap .annotation-text").all_text_contents()
    assert titles == ["before: music unit with the same index", "after: matched music unit"]
    expect(page.locator("#heatmap .gtitle")).to_contain_text("matched correlation")
    expect(page.locator("#heatmap .gtitle")).to_contain_text("units")
    expect(page.locator("#diagonal g.trace.bars")).to_have_count(2)  # before, after
    expect(page.locator("#permutation .gtitle")).to_contain_text("units move")


def test_heatmap_zoom_and_units_that_fire_together(page):
    page.locator("#group-chooser input").click()
    page.get_by_role("option", name="ffn0", exact=True).click()  # 64 units
    expect(page.locator("#heatmap .gtitle")).to_contain_text("ffn0: matched correlation", timeout=SLOW)
    expect(page.locator("#heatmap .gtitle")).to_contain_text("first 48 of 64")
    page.locator("#zoom label").filter(has_text="24").click()
    expect(page.locator("#heatmap .gtitle")).to_contain_text("first 24 of 64", timeout=SLOW)
    expect(page.locator("#unit-traces .legendtext")).to_have_count(3, timeout=SLOW)  # after the alignment
    legend = page.locator("#unit-traces .legendtext").all_text_contents()
    assert legend[0].startswith("speech unit") and "matched music unit" in legend[1] and "same index" in legend[2]
    expect(page.locator("#unit-traces .gtitle")).to_contain_text("match rank 1 of")
    unit = page.locator("#unit-chooser input")
    unit.fill("worst")
    unit.press("Enter")
    expect(page.locator("#unit-traces .gtitle")).not_to_contain_text("match rank 1 of", timeout=SLOW)
    expect(page.locator("#unit-note")).to_contain_text("same index")


def test_moving_the_alpha_slider_merges_and_updates_the_scores(page):
    slider = page.locator("#param-alpha input[type=range]")
    slider.scroll_into_view_if_needed()
    box = slider.bounding_box()
    page.mouse.click(box["x"] + 0.4 * box["width"], box["y"] + box["height"] / 2)  # press and release at ~0.4
    alpha = page.locator("#param-alpha input[type=number]").input_value()
    assert 0.3 < float(alpha) < 0.5
    expect(page.locator("#merge-status")).to_contain_text(f"alpha={float(alpha):g}", timeout=SLOW)
    expect(page.locator("#merge-status")).to_contain_text("on cpu")
    expect(page.locator("#merge-status")).to_contain_text("stage:", timeout=SLOW)  # the first answer
    expect(page.locator("#probe-bars g.trace.bars")).to_have_count(3)  # speech, merged, music
    assert page.locator("#probe-bars .legendtext").all_text_contents() == ["speech", "merged", "music"]
    expect(page.locator("#tradeoff .legendtext").filter(has_text="this merge")).to_have_count(1)


def test_choosing_a_method_shows_its_own_parameters_and_merges(page):
    method = page.locator("#method")
    method.scroll_into_view_if_needed()
    method.locator("label").filter(has_text="ties").click()
    for shown in ("lambda_speech", "lambda_music", "density", "trim"):
        expect(page.locator(f"#param-{shown}")).to_be_visible(timeout=SLOW)
    for hidden in ("alpha", "drop", "variant"):
        expect(page.locator(f"#param-{hidden}")).to_be_hidden()
    expect(page.locator("#merge-status")).to_contain_text("ties", timeout=SLOW)  # a method change merges at once
    expect(page.locator("#merge-status")).to_contain_text("density=0.2", timeout=SLOW)
    method.locator("label").filter(has_text="permute").click()
    expect(page.locator("#param-alpha")).to_be_visible(timeout=SLOW)
    expect(page.locator("#param-density")).to_be_hidden()
    expect(page.locator("#merge-status")).to_contain_text("permute", timeout=SLOW)


def test_uploading_a_clip_shows_predictions_of_all_three_encoders(page):
    page.locator("#clip input[type=file]").set_input_files(str(CLIP))
    predictions = page.locator("#predictions")
    expect(predictions).to_contain_text("chord_quality", timeout=SLOW)
    expect(page.locator("#clip-status")).to_contain_text(f"{CLIP.name}: 3.0 s")
    headers = predictions.locator("thead th, [role=columnheader]").all_text_contents()
    assert [h.replace("⋮", "").strip() for h in headers[:4]] == ["task", "speech", "merged", "music"]
    expect(page.locator("#clip-status")).to_contain_text(f"music = {MODEL_NAMES['music']}")
    assert "merge first" not in predictions.inner_text()
    expect(predictions).to_contain_text("%)")


def test_a_long_clip_shows_what_each_encoder_hears_over_time(page):
    expect(page.locator("#timeline")).to_be_visible(timeout=SLOW)  # the 3 s clip uploaded above
    expect(page.locator("#timeline g.trace.bars")).to_have_count(15, timeout=SLOW)  # 5 tasks x 3 encoders
    expect(page.locator("#timeline .gtitle")).to_contain_text("over time")


def test_mixer_plays_the_mix_reads_it_and_sweeps_the_level(page):
    page.locator("#mix-button").scroll_into_view_if_needed()
    page.click("#mix-button")
    table = page.locator("#mix-predictions")
    expect(table).to_contain_text("instrument_family", timeout=SLOW)
    expect(table).to_contain_text("%)")
    expect(page.locator("#mix-status")).to_contain_text("+0 dB")
    expect(page.locator("#mix-audio audio, #mix-audio [data-testid='waveform-controls'], #mix-audio .waveform-container").first
           ).to_be_attached(timeout=SLOW)
    page.click("#mix-sweep-button")
    expect(page.locator("#mix-sweep g.trace.scatter")).to_have_count(6, timeout=SLOW)  # 3 encoders x 2 labels
    expect(page.locator("#mix-sweep-note")).to_contain_text("followed")


def test_bad_uploads_get_a_toast_and_the_page_keeps_working(page, tmp_path):
    page.locator("#clip button[aria-label*='Clear'], #clip button[title*='Clear']").first.click()
    big = tmp_path / "big.wav"
    sf.write(big, 0.1 * np.random.default_rng(0).standard_normal(UPLOAD_LIMIT).astype(np.float32), 16000)
    page.locator("#clip input[type=file]").set_input_files(str(big))
    expect(page.locator(".toast-body").filter(has_text="exceed the maximum allowed size")).to_be_visible(timeout=SLOW)
    bogus = tmp_path / "not-audio.wav"
    bogus.write_bytes(b"RIFF....WAVEfmt this is not a wave file")
    page.locator("#clip input[type=file]").set_input_files(str(bogus))
    expect(page.locator(".toast-body").filter(has_text="not a readable audio file")).to_be_visible(timeout=SLOW)
    page.locator("#method label").filter(has_text="linear").click()  # choosing a method merges
    expect(page.locator("#merge-status")).to_contain_text("linear alpha=", timeout=SLOW)
