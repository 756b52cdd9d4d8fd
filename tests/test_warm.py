"""The built-ins' warm results shipped in assets/warm are what the code computes now, from the same encoders, probe
suite, calibration clips and settings: when a test here fails, run `python scripts/make_warm.py`."""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from merging.align import PAPER_COMPONENTS
from merging.live import full_subset, score_task
from merging.pipeline import align
from merging.probes import layer_features
from merging.service import LabConfig, Service
from merging.service.session import LabSession
from merging.service.store import WARM_DIR, Shipped, digest, results_of

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from make_warm import expected_keys  # noqa: E402

STALE = "the shipped warm results no longer match what the code computes: run python scripts/make_warm.py"


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> Service:
    """The app's default settings on an empty store, over the shipped results."""
    config = replace(LabConfig.from_env({}), cache_dir=tmp_path_factory.mktemp("store"), cache_bytes=2**30)
    return Service.start(config)


@pytest.fixture(scope="module")
def expected(service) -> dict[str, tuple]:
    return expected_keys(service)


def test_every_warm_result_the_app_looks_for_is_shipped_whole_and_nothing_else(expected):
    shipped = Shipped(WARM_DIR)
    missing = [name for name, key in expected.items() if digest(key) not in shipped]
    assert not missing, f"{STALE} (missing: {', '.join(missing)})"
    assert set(shipped.entries) == {digest(key) for key in expected.values()}, STALE
    assert all(shipped.read(key_id) is not None for key_id in shipped.entries), "a shipped file differs from its checksum"


def test_the_shipped_alignment_is_what_the_code_computes(service):
    lab = service.lab
    sources = lab.default_sources()
    shipped = lab.align(LabSession(), sources["speech"], sources["music"]).alignment
    assert lab.store.counts.written == 0  # read from the shipped results, not computed
    computed = align(lab.encoders.get(sources["speech"]), lab.encoders.get(sources["music"]), clips=lab.calibration()[0],
                     components=PAPER_COMPONENTS, absolute=True)
    assert list(computed.groups) == list(shipped.groups), STALE
    for name, group in computed.groups.items():
        assert torch.equal(group.perm, shipped.groups[name].perm), f"{STALE} ({name})"
        assert group.after == pytest.approx(shipped.groups[name].after, abs=1e-6), name


def test_the_shipped_input_scores_are_what_the_code_computes(service):
    scoring, lab = service.scoring, service.lab
    suite = scoring.live.suite
    for role in ("speech", "music"):
        key = lab.default_sources()[role]
        parent = scoring.parent(key)
        sample = list(range(0, len(suite.clips), 97))
        features = layer_features(lab.encoders.get(key), [suite.clips[i] for i in sample], suite.sample_rate,
                                  suite.batch_size)
        assert torch.allclose(features, parent.rows[sample], atol=1e-4), f"{STALE} ({role}'s features)"
        for task in suite.tasks:
            result = score_task(suite, task, full_subset(suite), lambda idx: parent.rows[list(idx)], seed=0)
            assert result.correct == parent.full_results[task.name].correct, f"{STALE} ({role}, {task.name})"
    assert lab.store.counts.written == 0  # read from the shipped results, not computed


@pytest.mark.slow
def test_a_shipped_curve_point_is_what_the_code_computes(service, expected):
    lab = service.lab
    sources = lab.default_sources()
    session = lab.align(LabSession(), sources["speech"], sources["music"])
    recipe = lab.recipe(session, sources, "linear", {"alpha": 0.5})
    shipped = results_of(service.lab.store.get(expected["linear α=0.5"]))
    fresh = Service.start(replace(lab.config, cache_dir=None))
    computed = [scores for _, (_, scores) in fresh.scoring.fill([recipe]) if scores is not None][-1]
    assert {t: r.correct for t, r in computed.results.items()} == {t: r.correct for t, r in shipped.items()}, STALE
