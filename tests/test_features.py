"""The faster inference path (merging.features.hidden_states) equals the model's own forward."""
from pathlib import Path

import pytest
import torch

from merging.features import conv_features, hidden_states
from tiny import TINY_VARIANTS, tiny_config, tiny_model


def _reference(model, audio):
    with torch.no_grad():
        return model(audio, output_hidden_states=True).hidden_states


@pytest.mark.parametrize("variant", sorted(TINY_VARIANTS))
@pytest.mark.parametrize("samples", [400, 1601, 4000, 16000])
def test_hidden_states_match_the_models_forward(variant, samples):
    model = tiny_model(tiny_config(**TINY_VARIANTS[variant]), seed=3)
    audio = 0.3 * torch.randn(3, samples, generator=torch.Generator().manual_seed(samples))
    expected, got = _reference(model, audio), hidden_states(model, audio)
    assert len(got) == len(expected)
    for e, g in zip(expected, got):
        assert g.shape == e.shape
        torch.testing.assert_close(g, e, atol=2e-5, rtol=1e-4)


def test_conv_features_with_a_conv_bias_and_a_loud_offset_clip():
    # a DC offset and a large scale stress the folded group norm's statistics
    model = tiny_model(tiny_config(conv_bias=True), seed=5)
    audio = torch.cat([5.0 + 0.01 * torch.randn(1, 8000), 20 * torch.randn(1, 8000)])
    with torch.no_grad():
        expected = model.feature_extractor(audio).transpose(1, 2)
        got = conv_features(model.feature_extractor, audio)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_trained_encoder_features_match():
    from merging.encoders import load_encoder

    model = load_encoder(Path(__file__).parents[1] / "assets" / "models" / "tiny-hubert-speech").model
    audio = 0.2 * torch.randn(2, 16000, generator=torch.Generator().manual_seed(0))
    for e, g in zip(_reference(model, audio), hidden_states(model, audio)):
        torch.testing.assert_close(g, e, atol=2e-5, rtol=1e-4)


def test_too_short_audio_is_refused():
    model = tiny_model()
    with pytest.raises(ValueError, match="too few"):
        conv_features(model.feature_extractor, torch.zeros(1, 300))


@pytest.mark.parametrize("case", ["training", "float64", "stable-layer-norm"])
def test_other_cases_use_the_models_own_forward(case, monkeypatch):
    import merging.features

    monkeypatch.setattr(merging.features, "conv_features", lambda *a: pytest.fail("fast path taken"))
    config = tiny_config(**TINY_VARIANTS["stable-layer-norm"]) if case == "stable-layer-norm" else tiny_config()
    model = tiny_model(config).train(case == "training")
    audio = torch.randn(1, 4000, dtype=torch.float64 if case == "float64" else torch.float32)
    model = model.double() if case == "float64" else model
    assert len(hidden_states(model, audio)) == model.config.num_hidden_layers + 1
