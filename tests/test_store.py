"""The result store: entries found again by content after a restart, never served when corrupt, bounded on disk, shared
safely by two processes; and the scorer and the lab on top of it."""
from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
import torch

from merging.live import UNCORRECTED
from merging.service import LabConfig, Service
from merging.service.config import default_cache_dir
from merging.service.session import LabSession
from merging.service.store import Entry, Store, digest


def entry(seed: int, size: int = 1000) -> Entry:
    generator = torch.Generator().manual_seed(seed)
    return Entry({"values": torch.randn(size, generator=generator), "order": torch.arange(7)}, {"seed": seed})


def same(a: Entry, b: Entry) -> bool:
    return a.meta == b.meta and a.tensors.keys() == b.tensors.keys() and all(
        torch.equal(a.tensors[name], b.tensors[name]) for name in a.tensors)


def test_an_entry_is_found_again_by_its_key_in_a_new_store_on_the_same_folder(tmp_path):
    store = Store(tmp_path, 2**20)
    assert store.get(["a", 1]) is None and ["a", 1] not in store
    assert store.put(["a", 1], entry(1))
    again = Store(tmp_path, 2**20)
    assert ["a", 1] in again and same(again.get(["a", 1]), entry(1)) and again.get(["a", 2]) is None
    assert (again.counts.hits, again.counts.misses) == (1, 1)
    assert not list((tmp_path / "entries").glob("*.tmp"))  # written whole, then renamed into place


def test_a_tampered_or_missing_file_is_never_served_and_its_entry_goes(tmp_path):
    store = Store(tmp_path, 2**20)
    store.put("tampered", entry(1))
    store.put("missing", entry(2))
    rows = {row["key"]: row for row in store.rows()}
    path = store.path(rows['"tampered"'])
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # one bit pattern of one number: still a readable safetensors file
    path.write_bytes(bytes(data))
    store.path(rows['"missing"']).unlink()
    assert store.get("tampered") is None and store.get("missing") is None
    assert store.counts.rejected == 2 and store.rows() == [] and "tampered" not in store
    assert store.put("tampered", entry(1)) and same(store.get("tampered"), entry(1))  # recomputed, kept again


def test_the_least_recently_used_entries_go_first_beyond_the_cap_and_an_oversized_one_is_not_kept(tmp_path):
    one = len(entry(0).encode())
    store = Store(tmp_path, 3 * one)
    for seed in range(3):
        store.put(seed, entry(seed))
    store.get(0)  # used again: the oldest use is now 1
    store.put(3, entry(3))
    assert [store.get(k) is not None for k in range(4)] == [True, False, True, True]
    assert store.bytes() <= 3 * one and len(list((tmp_path / "entries").iterdir())) == 3
    assert not store.put("huge", entry(9, size=3 * 1000)) and "huge" not in store


def _hammer(folder: str, seed: int, rounds: int, errors) -> None:
    """One process's share of a shared store: the same keys as the other process, with the same content."""
    try:
        store = Store(Path(folder), 40 * len(entry(0, 20000).encode()))
        for i in range(rounds):
            key = (seed + i) % 6
            found = store.get(["shared", key])
            if found is not None and not same(found, entry(key, 20000)):
                errors.put(f"wrong content for key {key}")
            store.put(["shared", key], entry(key, 20000))
            store.put(["own", seed, i % 3], entry(100 * seed + i % 3, 20000))
    except Exception as error:  # noqa: BLE001 -- reported to the test
        errors.put(repr(error))


def test_two_processes_sharing_one_store_do_not_corrupt_it(tmp_path):
    context = multiprocessing.get_context("spawn")
    errors = context.Queue()
    workers = [context.Process(target=_hammer, args=(str(tmp_path), seed, 40, errors)) for seed in (0, 1)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
    assert [worker.exitcode for worker in workers] == [0, 0]
    assert errors.empty()
    store = Store(tmp_path, 2**30)
    for key in range(6):
        assert same(store.get(["shared", key]), entry(key, 20000))
    for seed in (0, 1):
        for i in range(3):
            assert same(store.get(["own", seed, i]), entry(100 * seed + i, 20000))
    assert store.counts.rejected == 0
    assert {row["file"] for row in store.rows()} == {p.name for p in (tmp_path / "entries").glob("*.safetensors")}


def test_the_store_is_configured_beside_gradios_cache_and_counts_against_the_disk_cap(tmp_path):
    config = LabConfig.from_env({"GRADIO_TEMP_DIR": str(tmp_path / "gradio"), "MERGE_LAB_DISK_MB": "1000"})
    assert config.cache_dir == tmp_path / "merge-lab-cache" == default_cache_dir({"GRADIO_TEMP_DIR": str(tmp_path / "gradio")})
    assert config.cache_bytes == 500 * 2**20 and config.files_bytes == 500 * 2**20
    assert LabConfig.from_env({"MERGE_LAB_CACHE": "none"}).cache_dir is None
    mine = LabConfig.from_env({"MERGE_LAB_CACHE": str(tmp_path / "mine"), "MERGE_LAB_CACHE_MB": "100"})
    assert mine.cache_dir == tmp_path / "mine" and mine.cache_bytes == 100 * 2**20
    assert LabConfig().cache_dir is None and LabConfig().files_bytes == LabConfig().max_disk_bytes


# -- the scorer and the lab on a store -------------------------------------------------------------------

def service_on(folder: Path, lab_models: Path) -> Service:
    config = LabConfig(models_dir=lab_models, calibration_limit=16, fit_iterations=10, cache_dir=folder,
                       cache_bytes=2**30)
    return Service.start(config, budget_seconds=0.1, shipped=None)


def permute_recipe(service: Service, alpha: float = 0.3):
    lab = service.lab
    sources = lab.default_sources()
    session = lab.align(LabSession(), sources["speech"], sources["music"])
    return lab.merge(session, sources, "permute", {"alpha": alpha}).merged.recipe


def stages_of(service: Service, recipe) -> list:
    return [scores for _, scores in service.scoring.stream(recipe, service.scoring.lease("someone")) if scores is not None]


@pytest.fixture(scope="module")
def first_run(lab_models, tmp_path_factory):
    """A service that scored one merge on an empty store: (store folder, its recipe, its stages, its inputs' results)."""
    folder = tmp_path_factory.mktemp("store")
    service = service_on(folder, lab_models)
    recipe = permute_recipe(service)
    stages = stages_of(service, recipe)
    inputs = {key: service.scoring.parent(key).full_results for _, key in recipe.ends}
    return folder, recipe, stages, inputs


def test_a_first_release_answers_from_its_subset_before_its_inputs_are_scored(first_run):
    _, _, stages, _ = first_run
    names = [s.stage for s in stages]
    assert names[0] == UNCORRECTED and not stages[0].corrected  # the inputs were not known: said so, not corrected
    assert names[1] == "quick" and stages[1].corrected and len(stages[1].references) >= 2 and names[-1] == "full"
    assert stages[1].clips == stages[0].clips  # the corrected stage reused the first one's clips


def test_a_restarted_service_serves_the_same_scores_from_the_store_without_computing(first_run, lab_models, monkeypatch):
    folder, recipe, stages, inputs = first_run
    restarted = service_on(folder, lab_models)
    monkeypatch.setattr("merging.service.lab.align", lambda *a, **k: pytest.fail("an alignment was computed again"))
    monkeypatch.setattr("merging.live.LiveProbes.parent_steps",
                        lambda *a, **k: pytest.fail("an input was scored again"))
    again = permute_recipe(restarted)  # (writing its weights into the pooled model is not scoring it)
    monkeypatch.setattr(restarted.lab, "loaded", lambda recipe: pytest.fail("a scored merge was computed again"))
    served = stages_of(restarted, again)
    assert again.key == recipe.key and [s.stage for s in served] == ["full"]
    assert served[0].accuracy == stages[-1].accuracy and served[0].summary() == stages[-1].without_probes().summary()
    assert set(served[0].ladder) == set(stages[-1].ladder)
    for key, results in inputs.items():
        assert restarted.scoring.parent(key).full_results == results
    assert restarted.scoring.probes(again).keys() == stages[-1].probes.keys()  # the listening panels' probes too
    counts = restarted.lab.store.counts
    assert counts.hits == 4 and counts.written == 0 and counts.rejected == 0  # alignment, two inputs, the merge


def test_a_tampered_entry_is_recomputed_not_served(first_run, lab_models, monkeypatch):
    from merging.live import LiveProbes

    folder, recipe, _, inputs = first_run
    service = service_on(folder, lab_models)
    speech = recipe.ends[0][1]
    key = service.scoring.keys.parent(service.lab.checksum(speech))
    row = next(row for row in service.lab.store.rows() if row["id"] == digest(key))
    path = service.lab.store.path(row)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    computed, original = [], LiveProbes.parent_steps

    def counted(*args, **kwargs):
        computed.append(1)
        return (yield from original(*args, **kwargs))

    monkeypatch.setattr(LiveProbes, "parent_steps", counted)
    assert service.scoring.parent(speech).full_results == inputs[speech] and computed == [1]
    assert service.lab.store.counts.rejected == 1 and key in service.lab.store  # kept again, whole
    assert Store(folder, 2**30).get(key) is not None


def _align_in(folder: str, models: str, out) -> None:
    service = service_on(Path(folder), Path(models))
    sources = service.lab.default_sources()
    session = service.lab.align(LabSession(), sources["speech"], sources["music"])
    out.put({name: perm.tolist() for name, perm in session.alignment.perms.items()})


def test_two_app_processes_aligning_the_same_pair_on_one_store_agree_and_leave_it_whole(lab_models, tmp_path):
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    workers = [context.Process(target=_align_in, args=(str(tmp_path), str(lab_models), out)) for _ in range(2)]
    for worker in workers:
        worker.start()
    results = [out.get(timeout=600) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
    assert [worker.exitcode for worker in workers] == [0, 0] and results[0] == results[1]
    store = Store(tmp_path, 2**30)
    assert len(store.rows()) == 1 and store.get(store_key_of(store)) is not None and store.counts.rejected == 0


def store_key_of(store: Store):
    import json

    return json.loads(store.rows()[0]["key"])
