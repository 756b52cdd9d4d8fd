import json

import pytest
import torch
from transformers import HubertModel

from merging.cli import main
from merging.encoders import load_encoder
from merging.methods import METHODS, Param, linear, register
from merging.spec import COMPONENTS, apply_permutations, hubert_spec, random_permutations
from merging.state import state_checksum
from tiny import tiny_config, tiny_model

AUDIO = torch.randn(1, 8000, generator=torch.Generator().manual_seed(0))


def save(model, path):
    model.save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps(
        {"feature_extractor_type": "Wav2Vec2FeatureExtractor", "sampling_rate": 16000, "do_normalize": False,
         "feature_size": 1, "padding_value": 0.0, "return_attention_mask": False}))
    return str(path)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    speech, music, base = tiny_model(seed=0), tiny_model(seed=1), tiny_model(seed=2)
    paths = {name: save(m, root / name) for name, m in [("speech", speech), ("music", music), ("base", base)]}
    paths["root"] = root
    return paths


def outputs(path):
    model = HubertModel.from_pretrained(path).eval()
    with torch.no_grad():
        return model(AUDIO).last_hidden_state


@pytest.mark.parametrize("method, extra", [
    ("linear", ["--alpha", "0.3"]),
    ("permute", ["--alpha", "0.1", "--components", "cnn,res,ffn,attn"]),
    ("permute", ["--alpha", "0.5", "--align", "weights"]),
    ("task_arithmetic", ["--lambda-speech", "0.7", "--lambda-music", "0.3"]),
    ("task_arithmetic", ["--align-to-base", "--align", "weights"]),
    ("task_arithmetic", ["--layer-lambdas", "1:0,0.5:0.5"]),
    ("ties", ["--trim", "per_tensor", "--density", "0.5"]),
    ("dare", ["--combine", "ties", "--drop", "0.5"]),
    ("drm", ["--variant", "vertical", "--prune", "per_model"]),
    ("ties", []),
    ("dare", ["--seed", "3"]),
    ("drm", []),
])
def test_every_method_writes_a_reloadable_model_and_its_record(checkpoints, tmp_path, method, extra, capsys):
    out = tmp_path / "merged"
    args = ["merge", "--speech", checkpoints["speech"], "--music", checkpoints["music"], "--method", method, "--out", str(out)]
    if method not in ("linear", "permute"):
        args += ["--base", checkpoints["base"]]
    assert main(args + extra) == 0
    summary = capsys.readouterr().out.strip().splitlines()
    assert len(summary) == 1 and summary[0].startswith(f"merged {method}")
    record = json.loads((out / "merge_config.json").read_text())
    assert record["method"] == method and "speech" in record["inputs"]
    assert torch.isfinite(outputs(out)).all()
    if method == "permute":
        groups = record["alignments"]["music"]["groups"]
        assert groups and all("perm" in g and g["after"] >= g["before"] - 1e-6 for g in groups.values() if "attn" not in g["component"])


def test_permute_at_alpha_one_is_functionally_the_music_encoder(checkpoints, tmp_path):
    out = tmp_path / "merged"
    assert main(["merge", "--speech", checkpoints["speech"], "--music", checkpoints["music"], "--method", "permute",
                 "--alpha", "1", "--components", "cnn,ffn,attn", "--out", str(out)]) == 0
    torch.testing.assert_close(outputs(out), outputs(checkpoints["music"]), atol=1e-4, rtol=0)


def test_saved_merge_equals_the_in_memory_merge(checkpoints, tmp_path):
    out = tmp_path / "merged"
    assert main(["merge", "--speech", checkpoints["speech"], "--music", checkpoints["music"], "--method", "linear",
                 "--alpha", "0.25", "--out", str(out)]) == 0
    speech, music = load_encoder(checkpoints["speech"]), load_encoder(checkpoints["music"])
    in_memory = HubertModel(speech.config).eval()
    in_memory.load_state_dict(linear(speech.state_dict(), music.state_dict(), alpha=0.25))
    with torch.no_grad():
        torch.testing.assert_close(outputs(out), in_memory(AUDIO).last_hidden_state, atol=1e-6, rtol=0)


def test_speech_ft_interpolates_pretrained_and_finetuned(checkpoints, tmp_path):
    out = tmp_path / "ft"
    assert main(["merge", "--speech", checkpoints["speech"], "--finetuned", checkpoints["music"], "--method", "speech_ft",
                 "--alpha", "0", "--out", str(out)]) == 0
    assert state_checksum(load_encoder(str(out)).state_dict()) == state_checksum(load_encoder(checkpoints["speech"]).state_dict())


def test_bad_inputs_give_one_line_errors_and_write_nothing(checkpoints, tmp_path, capsys):
    out = tmp_path / "never"
    other = save(tiny_model(tiny_config(num_hidden_layers=3)), tmp_path / "three-layers")
    capsys.readouterr()  # drop what saving the fixture printed
    cases = [
        (["--music", other, "--method", "linear"], "num_hidden_layers"),
        (["--music", checkpoints["music"], "--method", "ties"], "--base"),
        (["--music", checkpoints["music"], "--method", "linear", "--alpha", "1.5"], "alpha"),
        (["--music", checkpoints["music"], "--method", "linear", "--lambda-music", "0.5"], "--lambda-music"),
        (["--music", str(tmp_path / "missing"), "--method", "linear"], "missing"),
        (["--music", checkpoints["music"], "--method", "permute", "--calib-dir", str(tmp_path)], "no audio"),
    ]
    for extra, needle in cases:
        assert main(["merge", "--speech", checkpoints["speech"], "--out", str(out)] + extra) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and needle in err and "\n" not in err, err
    assert not out.exists()


def test_a_registered_method_gets_its_cli_flags_and_its_place_in_the_app(checkpoints, tmp_path, capsys):
    import app_merge

    shift = Param("shift_by", 0.0, "added to every music weight", "shift", low=-1, high=1)
    alpha = Param("alpha", 0.5, "how much of the shift to apply", "α", low=0, high=1)

    @register("test_shift", "the music encoder plus a constant", params=(shift, alpha))
    def shifted(speech, music, *, shift_by, alpha):
        return {k: v + alpha * shift_by if v.is_floating_point() else v.clone() for k, v in music.items()}

    try:
        assert app_merge.method_choices()[-1] == "test_shift"
        note = app_merge.method_note("test_shift")
        alpha_slider, lambda_speech, layer_alphas = (app_merge.control_update(name, "test_shift", "permute")
                                                     for name in ("alpha", "lambda_speech", "layer_alphas"))
        assert note.startswith("the music encoder plus a constant") and "speech ← speech encoder" in note
        assert alpha_slider == {"__type__": "update", "visible": True, "label": "α: how much of the shift to apply",
                                "minimum": 0.0, "maximum": 1.0, "step": 0.01, "value": 0.5}  # not permute's α: reset
        assert not lambda_speech["visible"] and not layer_alphas["visible"]
        with pytest.raises(SystemExit):
            main(["merge", "--help"])
        help_text = " ".join(capsys.readouterr().out.split())
        assert "test_shift: the music encoder plus a constant" in help_text
        assert "--shift-by SHIFT_BY added to every music weight: [-1, 1], default 0 [test_shift]" in help_text
        out = tmp_path / "shifted"
        assert main(["merge", "--speech", checkpoints["speech"], "--music", checkpoints["music"], "--method", "test_shift",
                     "--shift-by", "0.5", "--alpha", "1", "--out", str(out)]) == 0
        music = load_encoder(checkpoints["music"]).state_dict()
        saved = load_encoder(str(out)).state_dict()
        torch.testing.assert_close(saved["masked_spec_embed"], music["masked_spec_embed"] + 0.5)
        assert main(["merge", "--speech", checkpoints["speech"], "--music", checkpoints["music"], "--method", "linear",
                     "--shift-by", "0.5", "--out", str(tmp_path / "never")]) == 2
        assert "method 'linear' takes no --shift-by" in capsys.readouterr().err
    finally:
        METHODS.pop("test_shift")
    with pytest.raises(SystemExit):
        main(["merge", "--help"])
    assert "test_shift" not in capsys.readouterr().out and "test_shift" not in app_merge.method_choices()


def test_different_sample_rates_are_refused_unless_allowed_and_then_recorded(checkpoints, tmp_path, capsys):
    import os
    import shutil

    fast = tmp_path / "music-24k"
    shutil.copytree(checkpoints["music"], fast)
    preprocessor = json.loads((fast / "preprocessor_config.json").read_text())
    (fast / "preprocessor_config.json").write_text(json.dumps({**preprocessor, "sampling_rate": 24000}))
    args = ["merge", "--speech", checkpoints["speech"], "--music", str(fast), "--method", "linear", "--out", str(tmp_path / "m")]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert "16000 Hz" in error and "24000 Hz" in error and "--allow-rate-mismatch" in error and not (tmp_path / "m").exists()
    assert main(args + ["--allow-rate-mismatch"]) == 0
    assert "warning: merged despite different sample rates" in capsys.readouterr().out
    record = json.loads((tmp_path / "m" / "merge_config.json").read_text())
    assert "24000 Hz" in record["sample_rate_mismatch"]
    assert record["inputs"]["music"]["source"] == "music-24k"  # the folder's name, not the server's path
    assert oct(os.stat(tmp_path / "m" / "model.safetensors").st_mode & 0o777) == "0o644"
