import json
import time

import huggingface_hub
import huggingface_hub.constants
import pytest
import torch
from safetensors.torch import load_file, save_file

from merging.encoders import check_compatible, config_from_mert, encoder_from_state, load_encoder
from merging.state import MergeError, state_checksum
from scripts.make_standins import MERT_FIELDS  # MERTConfig's constructor arguments
from tiny import TINY_VARIANTS, tiny_config, tiny_model

AUDIO = torch.randn(2, 4000, generator=torch.Generator().manual_seed(0))
WEIGHT_NORM_NEW = ("parametrizations.weight.original0", "parametrizations.weight.original1")


def outputs(model):
    with torch.no_grad():
        return model(AUDIO).last_hidden_state


def save_hubert(model, path, preprocessor=None):
    model.save_pretrained(path)
    if preprocessor is not None:
        fields = {"feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1, "padding_value": 0.0}
        (path / "preprocessor_config.json").write_text(json.dumps({**fields, **preprocessor}))
    return path


def legacy_state(model):
    """The model's weights under pre-parametrisation weight-norm names, as transformers 4 saved them."""
    return {name.replace(WEIGHT_NORM_NEW[0], "weight_g").replace(WEIGHT_NORM_NEW[1], "weight_v"): tensor.clone()
            for name, tensor in model.state_dict().items()}


def save_mert(model, path, prefix="", sample_rate=24000, **config_overrides):
    """A checkpoint as m-a-p's MERTModel.save_pretrained writes it: MERT config, legacy names, pytorch_model.bin."""
    path.mkdir(parents=True)
    hubert = model.config.to_dict()
    config = {field: hubert[field] for field in MERT_FIELDS}
    config.update(
        model_type="mert_model", architectures=["MERTModel"], transformers_version="4.24.0",
        auto_map={"AutoConfig": "configuration_MERT.MERTConfig", "AutoModel": "modeling_MERT.MERTModel"},
        feature_extractor_cqt=False, feature_extractor_cqt_bins=336, deepnorm=False, attention_relax=-1.0,
    )
    if sample_rate is not None:
        config["sample_rate"] = sample_rate
    config.update(config_overrides)
    (path / "config.json").write_text(json.dumps(config))
    torch.save({prefix + name: tensor for name, tensor in legacy_state(model).items()}, path / "pytorch_model.bin")
    return path


@pytest.mark.parametrize("variant", sorted(TINY_VARIANTS))
def test_local_checkpoint_loads_with_identical_outputs_and_its_preprocessor_settings(tmp_path, variant):
    source = tiny_model(tiny_config(**TINY_VARIANTS[variant]), seed=1)
    path = save_hubert(source, tmp_path / "speech", {"sampling_rate": 22050, "do_normalize": True})
    encoder = load_encoder(path)
    assert torch.equal(outputs(encoder.model), outputs(source))
    assert (encoder.sample_rate, encoder.normalize, encoder.name, encoder.source) == (22050, True, "speech", str(path))
    assert not encoder.model.training and encoder.device == torch.device("cpu")
    assert encoder.num_parameters == sum(p.numel() for p in source.parameters())
    assert state_checksum(encoder.state_dict()) == state_checksum(source.state_dict())
    check_compatible(encoder.config, source.config)


def test_without_preprocessor_config_it_is_16_khz_unnormalised(tmp_path):
    encoder = load_encoder(save_hubert(tiny_model(), tmp_path / "m"))
    assert (encoder.sample_rate, encoder.normalize) == (16000, False)


def test_legacy_weight_norm_names_in_a_bin_file_are_mapped(tmp_path):
    source = tiny_model(seed=2)
    path = save_hubert(source, tmp_path / "old")
    (path / "model.safetensors").unlink()
    state = legacy_state(source)
    assert "encoder.pos_conv_embed.conv.weight_g" in state
    torch.save(state, path / "pytorch_model.bin")
    assert torch.equal(outputs(load_encoder(path).model), outputs(source))


def test_ctc_wrapper_prefix_and_head_are_dropped(tmp_path):
    source = tiny_model(seed=3)
    path = save_hubert(source, tmp_path / "ctc")
    state = {f"hubert.{k}": v for k, v in source.state_dict().items()}
    state["lm_head.weight"] = torch.zeros(32, 32)
    save_file(state, path / "model.safetensors")
    assert torch.equal(outputs(load_encoder(path).model), outputs(source))


@pytest.mark.parametrize("prefix", ["", "mert_model."])
def test_mert_checkpoint_loads_into_hubert_model_without_remote_code(tmp_path, prefix):
    source = tiny_model(tiny_config(conv_bias=True), seed=4)
    path = save_mert(source, tmp_path / "MERT-v1-95M", prefix=prefix)
    encoder = load_encoder(path)
    assert type(encoder.model).__name__ == "HubertModel" and encoder.config.model_type == "hubert"
    assert torch.equal(outputs(encoder.model), outputs(source))
    assert (encoder.sample_rate, encoder.normalize) == (24000, False)
    check_compatible(encoder.config, source.config)


def test_mert_preprocessor_config_wins_and_unused_cqt_buffers_are_dropped(tmp_path):
    source = tiny_model(seed=5)
    path = save_mert(source, tmp_path / "mert", sample_rate=16000)
    state = torch.load(path / "pytorch_model.bin", weights_only=True)
    state["feature_extractor_cqt.cqt_kernels_real"] = torch.randn(4, 1, 8)  # disabled front end: dropped
    torch.save(state, path / "pytorch_model.bin")
    (path / "preprocessor_config.json").write_text(json.dumps({"sampling_rate": 24000, "do_normalize": True}))
    encoder = load_encoder(path)
    assert (encoder.sample_rate, encoder.normalize) == (24000, True)
    assert torch.equal(outputs(encoder.model), outputs(source))


@pytest.mark.parametrize("name, rate", [("MERT-v1-95M", 24000), ("MERT-v0-public", 16000)])
def test_mert_sample_rate_falls_back_on_the_version_in_its_name(tmp_path, name, rate):
    assert load_encoder(save_mert(tiny_model(), tmp_path / name, sample_rate=None)).sample_rate == rate


@pytest.mark.parametrize("model_type", ["mert_model", "hubert"])  # MERT-v1-330M's own config says "hubert"
@pytest.mark.parametrize("field, message", [("feature_extractor_cqt", "CQT front end"), ("deepnorm", "DeepNorm")])
def test_mert_parts_hubert_model_lacks_are_refused(tmp_path, field, message, model_type):
    path = save_mert(tiny_model(), tmp_path / "mert", model_type=model_type, **{field: True})
    with pytest.raises(MergeError, match=message):
        load_encoder(path)
    with pytest.raises(MergeError, match=field):
        config_from_mert(json.loads((path / "config.json").read_text()))


def test_config_from_mert_keeps_the_architecture():
    hubert = tiny_config(**TINY_VARIANTS["stable-layer-norm"])
    mert = {field: hubert.to_dict()[field] for field in MERT_FIELDS}
    config = config_from_mert({**mert, "model_type": "mert_model", "sample_rate": 24000, "attention_relax": 32.0})
    check_compatible(config, hubert)
    assert config.mask_time_prob == hubert.mask_time_prob


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


def test_hub_id_offline_fails_fast_with_one_line(offline_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(MergeError) as error:
        load_encoder("facebook/hubert-base-ls960")
    assert time.monotonic() - start < 5
    message = str(error.value)
    assert message.startswith("could not download 'facebook/hubert-base-ls960' from the Hugging Face hub: ")
    assert "HF_HUB_OFFLINE=1" in message and "\n" not in message


def test_unreachable_hub_fails_fast_with_one_line(offline_cache, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    start = time.monotonic()
    with pytest.raises(MergeError, match=r"^could not download 'm-a-p/MERT-v0-public' from the Hugging Face hub: \S"):
        load_encoder("m-a-p/MERT-v0-public")
    assert time.monotonic() - start < 10


def test_hub_download_pins_the_revision_and_falls_back_on_bin_weights(tmp_path, monkeypatch):
    snapshot = save_mert(tiny_model(seed=8), tmp_path / "snapshot", sample_rate=None)
    calls = []

    class FakeApi:
        def repo_info(self, repo_id, timeout):
            calls.append(("repo_info", repo_id, timeout))
            return type("Info", (), {"sha": "abc123"})()

    def fake_snapshot_download(repo_id, allow_patterns, revision, etag_timeout):
        calls.append(("snapshot", repo_id, revision, tuple(allow_patterns)))
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    encoder = load_encoder("m-a-p/MERT-v1-95M", allowed_hub_ids=["m-a-p/MERT-v1-95M"])
    assert (encoder.name, encoder.source, encoder.sample_rate) == ("MERT-v1-95M", "m-a-p/MERT-v1-95M", 24000)
    files = ("config.json", "preprocessor_config.json")
    assert calls == [
        ("repo_info", "m-a-p/MERT-v1-95M", 10.0),
        ("snapshot", "m-a-p/MERT-v1-95M", "abc123", (*files, "model.safetensors")),
        ("snapshot", "m-a-p/MERT-v1-95M", "abc123", (*files, "pytorch_model.bin")),
    ]


def test_hub_allow_list(offline_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MergeError, match="not one of the allowed encoders: m-a-p/MERT-v0-public"):
        load_encoder("evil/model", allowed_hub_ids=["m-a-p/MERT-v0-public"])
    with pytest.raises(MergeError, match="could not download"):  # allowed: goes on to the (offline) hub
        load_encoder("m-a-p/MERT-v0-public", allowed_hub_ids=["m-a-p/MERT-v0-public"])


def test_local_paths_must_stay_inside_the_allowed_roots(tmp_path):
    allowed, other = tmp_path / "a", tmp_path / "b"
    save_hubert(tiny_model(), allowed / "model")
    save_hubert(tiny_model(), other / "model")
    (allowed / "link").symlink_to(other / "model")
    assert load_encoder(allowed / "model", allowed_roots=[allowed]).name == "model"
    for escape in (allowed / ".." / "b" / "model", allowed / "link", other / "model"):
        with pytest.raises(MergeError, match="outside the allowed model folders"):
            load_encoder(escape, allowed_roots=[allowed])
    assert load_encoder(allowed / "link").name == "model"  # no roots: no restriction
    with pytest.raises(MergeError, match="outside the allowed model folders"):  # a path, never a hub id
        load_encoder("../b", allowed_roots=[allowed])


def _drop_weight(path):
    state = load_file(path / "model.safetensors")
    del state["encoder.layers.1.feed_forward.output_dense.bias"]
    save_file(state, path / "model.safetensors")


def _extra_weight(path):
    state = load_file(path / "model.safetensors")
    save_file({**state, "encoder.adapter.weight": torch.zeros(3)}, path / "model.safetensors")


def _reshape_weight(path):
    state = load_file(path / "model.safetensors")
    state["encoder.layers.0.attention.q_proj.weight"] = torch.zeros(32, 31)
    save_file(state, path / "model.safetensors")


def _nan_weight(path):
    state = load_file(path / "model.safetensors")
    state["encoder.layers.0.attention.k_proj.bias"][3] = float("nan")
    save_file(state, path / "model.safetensors")


def _rewrite_config(**changes):
    def apply(path):
        config = json.loads((path / "config.json").read_text())
        (path / "config.json").write_text(json.dumps({**config, **changes}))
    return apply


@pytest.mark.parametrize("damage, message", [
    (lambda p: (p / "config.json").unlink(), "has no config.json"),
    (lambda p: (p / "config.json").write_text("{not json"), "cannot read .*config.json"),
    (_rewrite_config(model_type="wav2vec2", architectures=["Wav2Vec2Model"]), "describes a 'wav2vec2' model"),
    (_rewrite_config(hidden_size="big"), "invalid config.json: .*hidden_size"),
    (lambda p: (p / "preprocessor_config.json").write_text('{"sampling_rate": "fast"}'), "invalid sample rate: 'fast'"),
    (lambda p: (p / "model.safetensors").unlink(), r"has no weights \(model.safetensors or pytorch_model.bin\)"),
    (lambda p: (p / "model.safetensors").write_bytes(b"garbage"), "cannot read weights"),
    (_drop_weight, "lacks weight 'encoder.layers.1.feed_forward.output_dense.bias'"),
    (_extra_weight, "unexpected weight 'encoder.adapter.weight'"),
    (_reshape_weight, r"'encoder.layers.0.attention.q_proj.weight' has shape \(32, 31\) but the config needs \(32, 32"),
    (_nan_weight, "'encoder.layers.0.attention.k_proj.bias' contains NaN"),
])
def test_bad_checkpoints_are_refused_naming_the_problem(tmp_path, damage, message):
    path = save_hubert(tiny_model(), tmp_path / "bad")
    damage(path)
    with pytest.raises(MergeError, match=message) as error:
        load_encoder(path)
    assert "\n" not in str(error.value)


def test_missing_directory_is_refused(tmp_path):
    with pytest.raises(MergeError, match="no such model directory"):
        load_encoder(tmp_path / "nowhere" / "model")


def test_incompatible_pairs_name_the_first_mismatch():
    base = tiny_config()
    check_compatible(base, tiny_config(hidden_dropout=0.3, mask_time_prob=0.0))  # training-only fields may differ
    message = "^incompatible encoders: num_hidden_layers is 2 in 'speech' but 3 in 'music'$"
    with pytest.raises(MergeError, match=message):
        check_compatible(base, tiny_config(num_hidden_layers=3))
    with pytest.raises(MergeError, match="hidden_size is 32 in 'speech' but 64 in 'music'"):
        check_compatible(base, tiny_config(hidden_size=64, num_hidden_layers=3))
    with pytest.raises(MergeError, match=r"conv_dim is \(16, 16, 16, 16, 16, 16, 16\) in 'a' but \(8,"):
        check_compatible(base, tiny_config(conv_dim=(8,) * 7), names=("a", "b"))
    for name, variant in TINY_VARIANTS.items():
        if variant:
            with pytest.raises(MergeError, match="incompatible encoders"):
                check_compatible(base, tiny_config(**variant))


def test_encoder_from_state_copies_and_never_mutates_its_input():
    source = tiny_model(seed=6)
    state = {k: v.clone() for k, v in source.state_dict().items()}
    before = state_checksum(state)
    encoder = encoder_from_state(source.config, state, sample_rate=24000, normalize=True, name="m", source="mem")
    assert torch.equal(outputs(encoder.model), outputs(source))
    assert (encoder.sample_rate, encoder.normalize, encoder.name, encoder.source) == (24000, True, "m", "mem")
    with torch.no_grad():
        for parameter in encoder.model.parameters():
            parameter.add_(1.0)
    assert state_checksum(state) == before


def test_encoder_from_state_accepts_legacy_names_and_refuses_bad_values():
    source = tiny_model(seed=7)
    settings = dict(sample_rate=16000, normalize=False, name="m", source="")
    encoder = encoder_from_state(source.config, legacy_state(source), **settings)
    assert torch.equal(outputs(encoder.model), outputs(source))
    broken = legacy_state(source)
    broken["masked_spec_embed"][0] = float("inf")
    with pytest.raises(MergeError, match="weights of 'm': tensor 'masked_spec_embed' contains NaN or Inf"):
        encoder_from_state(source.config, broken, **settings)
