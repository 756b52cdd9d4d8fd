"""The hub stand-ins of scripts/make_standins.py (layouts and their sources in its docstring) load as the real repositories do."""
import json

import pytest
import torch
from transformers import HubertConfig, HubertModel

from merging.encoders import COMPATIBILITY_FIELDS, check_compatible, load_encoder
from scripts import make_standins as standins

RATES = {"hubert-base-ls960": 16000, "MERT-v0-public": 16000, "MERT-v1-95M": 24000}
AUDIO = torch.randn(2, 8000, generator=torch.Generator().manual_seed(0))


def test_the_three_hub_encoders_have_stand_ins():
    assert {layout.hub_id for layout in standins.LAYOUTS.values()} == {
        "facebook/hubert-base-ls960", "m-a-p/MERT-v0-public", "m-a-p/MERT-v1-95M"}


@pytest.mark.parametrize("name", sorted(RATES))
def test_small_stand_ins_have_the_hub_layout_and_load_to_the_same_network(tmp_path, name):
    folder = standins.write_standin(name, tmp_path, seed=3, small=True)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "preprocessor_config.json", "pytorch_model.bin"]
    raw = json.loads((folder / "config.json").read_text())
    saved = torch.load(folder / "pytorch_model.bin", weights_only=True)
    assert {"encoder.pos_conv_embed.conv.weight_g", "encoder.pos_conv_embed.conv.weight_v"} <= set(saved)
    assert not any("parametrizations" in key for key in saved)
    if name.startswith("MERT"):
        assert raw["model_type"] == "mert_model" and raw["architectures"] == ["MERTModel"]
        assert raw["auto_map"]["AutoModel"] == "modeling_MERT.MERTModel" and raw["feature_extractor_cqt"] is False
        assert ("sample_rate" in raw) == (name == "MERT-v1-95M")
    else:
        assert raw["model_type"] == "hubert" and raw["architectures"] == ["HubertModel"] and "auto_map" not in raw
    encoder = load_encoder(folder)
    assert (encoder.sample_rate, encoder.normalize, encoder.name) == (RATES[name], True, name)
    torch.manual_seed(3)  # the network the script initialised, built directly
    reference = HubertModel(HubertConfig(**{**standins.LAYOUTS[name].config_fields, **standins.SMALL})).eval()
    with torch.no_grad():
        torch.testing.assert_close(encoder.model(AUDIO).last_hidden_state, reference(AUDIO).last_hidden_state)


def test_small_stand_ins_are_compatible_with_each_other(tmp_path):
    encoders = [load_encoder(standins.write_standin(name, tmp_path, small=True)) for name in RATES]
    for other in encoders[1:]:
        check_compatible(encoders[0].config, other.config)


def test_the_script_refuses_unknown_names(tmp_path, capsys):
    with pytest.raises(SystemExit):
        standins.main(["--out", str(tmp_path), "--small", "hubert-large"])
    assert "unknown stand-in 'hubert-large'" in capsys.readouterr().err and not any(tmp_path.iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RATES))
def test_full_size_stand_ins_load_as_base_size_encoders(tmp_path, name):
    encoder = load_encoder(standins.write_standin(name, tmp_path))
    base = HubertConfig()  # transformers' defaults are HuBERT Base, the architecture of all three
    assert all(getattr(encoder.config, f) == getattr(base, f) or list(getattr(encoder.config, f)) == list(getattr(base, f))
               for f in COMPATIBILITY_FIELDS)
    assert 94e6 < encoder.num_parameters < 95e6 and encoder.sample_rate == RATES[name]
