import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import HubertModel

import merging.checkpoint
from merging.checkpoint import load_merge_config, save_encoder, zip_encoder_dir
from merging.encoders import build_model, load_encoder
from merging.state import MergeError, state_checksum
from tiny import TINY_VARIANTS, tiny_config, tiny_model

AUDIO = torch.randn(2, 4000, generator=torch.Generator().manual_seed(0))


def outputs(model):
    with torch.no_grad():
        return model(AUDIO).last_hidden_state


def merged_state(config, seed=0):
    """A state dict as a merge produces it: a blend of two models, not owned by any model."""
    a, b = tiny_model(config, seed), tiny_model(config, seed + 1)
    state_b = b.state_dict()
    return {k: 0.7 * v + 0.3 * state_b[k] for k, v in a.state_dict().items()}


@pytest.mark.parametrize("variant", ["group-norm", "stable-layer-norm", "heads-8-groups-8-three-layers"])
def test_saved_directory_reloads_with_the_in_memory_outputs(tmp_path, variant):
    config = tiny_config(**TINY_VARIANTS[variant])
    state = merged_state(config)
    expected = outputs(build_model(config, state))
    out = save_encoder(tmp_path / "merged", state, config, sample_rate=24000, normalize=True)
    assert out == tmp_path / "merged"
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    plain = HubertModel.from_pretrained(out).eval()
    torch.testing.assert_close(outputs(plain), expected, atol=1e-6, rtol=0)
    encoder = load_encoder(out)
    torch.testing.assert_close(outputs(encoder.model), expected, atol=1e-6, rtol=0)
    assert (encoder.sample_rate, encoder.normalize) == (24000, True)
    preprocessor = json.loads((out / "preprocessor_config.json").read_text())
    assert preprocessor["feature_extractor_type"] == "Wav2Vec2FeatureExtractor"
    assert preprocessor["return_attention_mask"] == (config.feat_extract_norm == "layer")


def test_save_never_mutates_its_inputs(tmp_path):
    config = tiny_config()
    state = merged_state(config)
    before, config_before = state_checksum(state), config.to_dict()
    save_encoder(tmp_path / "m", state, config, sample_rate=16000, normalize=False, merge_config={"alpha": 0.1})
    assert state_checksum(state) == before and config.to_dict() == config_before


def test_merge_config_is_recorded_as_plain_json(tmp_path):
    record = {
        "method": "permute", "alpha": 0.1, "components": ("cnn", "ffn"),
        "permutations": {"ffn0": torch.tensor([2, 0, 1])}, "correlation": np.array([0.5, 0.25]),
        "mean": np.float32(0.5), "inputs": {"speech": {"source": Path("/models/speech")}},
    }
    out = save_encoder(tmp_path / "m", merged_state(tiny_config()), tiny_config(), sample_rate=16000, normalize=False,
                       merge_config=record)
    expected = {
        "method": "permute", "alpha": 0.1, "components": ["cnn", "ffn"], "permutations": {"ffn0": [2, 0, 1]},
        "correlation": [0.5, 0.25], "mean": 0.5, "inputs": {"speech": {"source": "/models/speech"}},
    }
    assert load_merge_config(out) == expected == load_merge_config(out / "merge_config.json")
    assert torch.equal(record["permutations"]["ffn0"], torch.tensor([2, 0, 1]))


@pytest.mark.parametrize("problem, message", [
    (dict(merge_config={"callback": object()}), "merge_config is not JSON-serialisable: value of type object"),
    (dict(drop="encoder.layer_norm.bias"), "merged weights lacks weight 'encoder.layer_norm.bias'"),
    (dict(nan="encoder.layers.0.attention.v_proj.weight"), "'encoder.layers.0.attention.v_proj.weight' contains NaN"),
])
def test_bad_input_is_refused_before_anything_is_written(tmp_path, problem, message):
    state = merged_state(tiny_config())
    if "drop" in problem:
        del state[problem["drop"]]
    if "nan" in problem:
        state[problem["nan"]][0, 0] = float("nan")
    with pytest.raises(MergeError, match=message):
        save_encoder(tmp_path / "m", state, tiny_config(), sample_rate=16000, normalize=False,
                     merge_config=problem.get("merge_config"))
    assert list(tmp_path.iterdir()) == []


def failing_save_file(tensors, filename, metadata=None):
    Path(filename).write_bytes(b"half a safetensors file")
    raise OSError("disk full")


def test_interrupted_save_leaves_no_directory_behind(tmp_path, monkeypatch):
    monkeypatch.setattr(merging.checkpoint, "save_file", failing_save_file)
    with pytest.raises(OSError, match="disk full"):
        save_encoder(tmp_path / "m", merged_state(tiny_config()), tiny_config(), sample_rate=16000, normalize=False)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_overwrite_keeps_the_old_directory_and_a_finished_one_replaces_it(tmp_path, monkeypatch):
    config = tiny_config()
    old_state, new_state = merged_state(config, seed=0), merged_state(config, seed=5)
    out = save_encoder(tmp_path / "m", old_state, config, sample_rate=16000, normalize=False, merge_config={"v": 1})
    with monkeypatch.context() as patch:
        patch.setattr(merging.checkpoint, "save_file", failing_save_file)
        with pytest.raises(OSError):
            save_encoder(out, new_state, config, sample_rate=16000, normalize=False)
    assert state_checksum(load_encoder(out).state_dict()) == state_checksum(old_state)
    assert load_merge_config(out) == {"v": 1}
    save_encoder(out, new_state, config, sample_rate=16000, normalize=False)
    assert state_checksum(load_encoder(out).state_dict()) == state_checksum(new_state)
    assert not (out / "merge_config.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_load_merge_config_of_a_directory_without_one(tmp_path):
    with pytest.raises(MergeError, match="no merge record at"):
        load_merge_config(tmp_path)


def test_zip_holds_the_directory_and_reloads(tmp_path):
    state = merged_state(tiny_config())
    out = save_encoder(tmp_path / "merged", state, tiny_config(), sample_rate=16000, normalize=False,
                       merge_config={"method": "linear"})
    archive = zip_encoder_dir(out, tmp_path / "downloads" / "merged.zip")
    with zipfile.ZipFile(archive) as z:
        assert sorted(z.namelist()) == ["merged/config.json", "merged/merge_config.json", "merged/model.safetensors",
                                        "merged/preprocessor_config.json"]
        z.extractall(tmp_path / "unzipped")
    assert state_checksum(load_encoder(tmp_path / "unzipped" / "merged").state_dict()) == state_checksum(state)


def test_interrupted_zip_leaves_nothing(tmp_path, monkeypatch):
    config = tiny_config()
    out = save_encoder(tmp_path / "merged", merged_state(config), config, sample_rate=16000, normalize=False)
    (tmp_path / "zips").mkdir()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(zipfile.ZipFile, "write", fail)
    with pytest.raises(OSError):
        zip_encoder_dir(out, tmp_path / "zips" / "merged.zip")
    assert list((tmp_path / "zips").iterdir()) == []
    with pytest.raises(MergeError, match="no such directory"):
        zip_encoder_dir(tmp_path / "missing", tmp_path / "zips" / "x.zip")
