"""Write the built-in encoders' warm results into assets/warm/: what a fresh clone's app would otherwise compute
after every start-up (the speech and music encoders' full-suite features and scores, their alignment, and their
linear and permute curves over the α grid), as result-store entries with the checksums they were made from.

    python scripts/make_warm.py [--out assets/warm]

It runs the app's own warm-up (`Service.warm`, the app's default settings) on an empty store, without the shipped
results, and copies every entry out with `manifest.json`. `tests/test_warm.py` fails when the shipped entries no
longer match what the code computes (encoders, probe suite, calibration clips, settings or code changed): run this
again then. Several minutes on two CPU threads.
"""
from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from merging.service import LabConfig, Service  # noqa: E402
from merging.service.lab import alignment_store_key  # noqa: E402
from merging.service.session import LabSession  # noqa: E402
from merging.service.store import WARM_DIR, Shipped  # noqa: E402


def expected_keys(service: Service) -> dict[str, tuple]:
    """The store keys of what the warm-up makes, by a name for messages: the speech and music encoders' full suites,
    their alignment (the app's default settings) and the full suites of their linear and permute curves."""
    lab, keys = service.lab, service.scoring.keys
    sources = lab.default_sources()
    speech, music = sources["speech"], sources["music"]
    expected = {f"{role} encoder's full suite": keys.parent(lab.checksum(sources[role])) for role in ("speech", "music")}
    expected["alignment"] = alignment_store_key(lab.alignment_key(speech, music))
    session = lab.align(LabSession(), speech, music)
    for recipe in lab.curve_recipes(session, speech, music):
        expected[f"{recipe.method} {recipe.placed[1]}"] = keys.full(recipe)
    return expected


def made_from(service: Service) -> dict:
    """The checksums the entries were made from, for a person reading the manifest (the keys hold them too)."""
    lab, keys = service.lab, service.scoring.keys
    sources = lab.default_sources()
    return {
        "encoders": {sources[role]: lab.checksum(sources[role]) for role in ("speech", "music")},
        "probe suite": keys.suite, "probe settings (seed, L-BFGS steps, clips per batch)": list(keys.settings),
        "stages (clips per class, L-BFGS steps)": [list(keys.ladder[0]), keys.ladder[1]], "results code": keys.code,
        "alignment (speech, music, components, absolute, calibration and code)": list(
            lab.alignment_key(sources["speech"], sources["music"])),
        "torch": torch.__version__,
        "made": datetime.date.today().isoformat(),
    }


def export(service: Service, out: Path) -> dict:
    """Copy every entry of the service's store to `out` with its manifest; the manifest."""
    store = service.lab.store
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.safetensors"):
        old.unlink()
    entries = {}
    for row in store.rows():
        file = f"{row['id']}.safetensors"
        shutil.copyfile(store.path(row), out / file)
        entries[row["id"]] = {"key": row["key"], "file": file, "checksum": row["checksum"], "bytes": row["bytes"]}
    manifest = {"entries": entries, "made_from": made_from(service)}
    (out / Shipped.MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=WARM_DIR)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="merge-lab-warm-") as folder:
        config = replace(LabConfig.from_env({}), cache_dir=Path(folder), cache_bytes=2**32)
        service = Service.start(config, shipped=None)
        start = time.perf_counter()
        service.warm()
        missing = [name for name, key in expected_keys(service).items() if key not in service.lab.store]
        if missing:
            sys.exit(f"the warm-up did not make: {', '.join(missing)}")
        manifest = export(service, args.out)
    size = sum(entry["bytes"] for entry in manifest["entries"].values())
    print(f"{len(manifest['entries'])} entries, {size / 2**20:.1f} MB, in {time.perf_counter() - start:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
