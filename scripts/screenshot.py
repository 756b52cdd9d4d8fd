"""Screenshot of the app in use, for the README: start `python app.py`, align, merge, probe a clip, mix, capture.

    python scripts/screenshot.py [--out docs/screenshot.png] [--url URL]

Serves MERGE_LAB_MODELS (default assets/models) unless --url points at a running app. Drives the
system chromium (/usr/bin/chromium or `chromium` on PATH) through Playwright.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from bench_app import connect, running_app  # noqa: E402

from merging.catalogue import MODEL_NAMES, MODELS_DIR  # noqa: E402

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
CLIP = ROOT / "assets" / "audio" / "examples" / "speech_over_music_yes_synth_lead.ogg"
WAIT = 300_000  # ms


def capture(url: str, out: Path, alpha: float) -> None:
    chromium = os.environ.get("MERGE_LAB_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url, wait_until="load")
        expect(page.locator("#encoder-table")).to_contain_text("Hz", timeout=WAIT)
        page.click("#align-button")
        expect(page.locator("#heatmap .hm image")).to_have_count(2, timeout=WAIT)
        page.locator("#param-alpha input[type=number]").fill(str(alpha))
        page.click("#merge-button")  # the slider may already stand at α: a release would then change nothing
        expect(page.locator("#merge-status")).to_contain_text("merged in", timeout=WAIT)
        expect(page.locator("#probe-bars g.trace.bars")).to_have_count(3, timeout=WAIT)
        # the refined stages stream in; the picture shows the last one, the full suite, with both curves
        expect(page.locator("#merge-status")).to_contain_text("stage: full suite", timeout=2 * WAIT)
        expect(page.locator("#tradeoff .legendtext").filter(has_text="permute")).to_have_count(1, timeout=2 * WAIT)
        page.locator("#clip input[type=file]").set_input_files(str(CLIP))
        expect(page.locator("#predictions")).to_contain_text("%)", timeout=WAIT)
        expect(page.locator("#unit-traces .legendtext")).to_have_count(3, timeout=WAIT)
        expect(page.locator("#timeline g.trace.bars")).to_have_count(15, timeout=WAIT)
        page.click("#mix-button")
        expect(page.locator("#mix-predictions")).to_contain_text("%)", timeout=WAIT)
        page.click("#mix-sweep-button")
        expect(page.locator("#mix-sweep g.trace.scatter")).to_have_count(6, timeout=WAIT)
        page.wait_for_timeout(1000)  # let the plots finish their transitions
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out), full_page=True)
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshot.png")
    parser.add_argument("--url", help="an app already running")
    parser.add_argument("--alpha", type=float, default=0.1)
    args = parser.parse_args()
    models = Path(os.environ.get("MERGE_LAB_MODELS", MODELS_DIR))
    missing = [name for name in MODEL_NAMES.values() if not (models / name).is_dir()]
    if missing and not args.url:
        raise SystemExit(f"the built-in encoders are missing from {models}: {', '.join(missing)}")
    with running_app(args.url, models) as (url, _, _):
        connect(url)  # waits until the app answers
        capture(url, args.out, args.alpha)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
