"""Random-weight stand-ins of the hub encoders the app offers, written in the hub repositories' own layouts.

    python scripts/make_standins.py [--out runs/standins] [--small] [--seed 0] [NAME ...]

Writes one folder per encoder (by default all three: hubert-base-ls960, MERT-v0-public, MERT-v1-95M),
loadable by `merging.encoders.load_encoder` exactly as the downloaded repositories are, but with
randomly initialised weights (transformers' own initialisation of a HubertModel), so tests and
benchmarks run at full size without a network. `--small` keeps every layout detail and shrinks the
network (hidden 64, 2 layers) for fast tests. Weights never go into git: write under runs/ or a temp dir.

What each layout copies from the hub, and where it was seen:

- `facebook/hubert-base-ls960`: the repository's file list (config.json, preprocessor_config.json,
  pytorch_model.bin, tf_model.h5; no model.safetensors on `main`, only on an unmerged conversion
  PR). config.json: `model_type: hubert`, `architectures: [HubertModel]`, group-norm CNN without
  conv bias (512 channels; kernels 10,3,3,3,3,2,2; strides 5,2,2,2,2,2,2), 768 hidden, 12 layers,
  12 heads, FFN 3072, positional conv 128 taps in 16 groups, post-norm, `layer_norm_eps` 1e-5, as
  repeated by the configs of models fine-tuned from it (`_name_or_path: facebook/hubert-base-ls960`).
  preprocessor_config.json: Wav2Vec2FeatureExtractor at 16 kHz; `do_normalize: true` is inferred
  from the file's listed size (213 bytes is what transformers writes for these fields with `true`).
  pytorch_model.bin: a HubertModel state dict without prefix, saved by transformers 4, so the
  positional conv's weight norm is stored as `weight_g`/`weight_v`.
- `m-a-p/MERT-v0-public`: config.json as its commit 48ca8f9 ("Update config.json") left it:
  `model_type: mert_model`, `architectures: [MERTModel]`, `attention_relax: -1.0` and an `auto_map`
  to `configuration_MERT.MERTConfig` / `modeling_MERT.MERTModel` (the remote code this project never
  runs), with the fields of MERTConfig's constructor (configuration_MERT.py: the HuBERT-base
  architecture plus `feature_extractor_cqt`, `feature_extractor_cqt_bins: 336`, `deepnorm`); no
  `sample_rate` field, so the rate comes from preprocessor_config.json: 16 kHz (the model card's
  table: 16 kHz, 50 Hz features). pytorch_model.bin with legacy weight-norm names, as above.
- `m-a-p/MERT-v1-95M`: the same MERT layout with `sample_rate: 24000` in config.json and a 24 kHz
  feature extractor (model card: 24 kHz, 75 Hz features); `activation_dropout` 0.0 as in configs
  derived from it. MERT's preprocessor fields other than the rate (`do_normalize: true`,
  `return_attention_mask: true`) follow its card's use of Wav2Vec2FeatureExtractor and are assumed.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import HubertConfig, HubertModel

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "runs" / "standins"

# The arguments of MERTConfig.__init__ in m-a-p's configuration_MERT.py that HubertConfig shares.
MERT_FIELDS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
    "hidden_dropout", "activation_dropout", "attention_dropout", "feat_proj_layer_norm", "feat_proj_dropout",
    "final_dropout", "layerdrop", "initializer_range", "layer_norm_eps", "feat_extract_norm", "feat_extract_activation",
    "conv_dim", "conv_stride", "conv_kernel", "conv_bias", "num_conv_pos_embeddings", "num_conv_pos_embedding_groups",
    "do_stable_layer_norm", "apply_spec_augment", "mask_time_prob", "mask_time_length", "mask_time_min_masks",
    "mask_feature_prob", "mask_feature_length", "mask_feature_min_masks", "ctc_loss_reduction", "ctc_zero_infinity",
    "use_weighted_layer_sum", "classifier_proj_size", "pad_token_id", "bos_token_id", "eos_token_id",
)
MERT_EXTRAS = {"feature_extractor_cqt": False, "feature_extractor_cqt_bins": 336, "deepnorm": False, "attention_relax": -1.0}
MERT_AUTO_MAP = {"AutoConfig": "configuration_MERT.MERTConfig", "AutoModel": "modeling_MERT.MERTModel"}
SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, conv_dim=(32,) * 7,
             num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
WEIGHT_NORM = {"parametrizations.weight.original0": "weight_g", "parametrizations.weight.original1": "weight_v"}


@dataclass(frozen=True)
class Layout:
    hub_id: str
    mert: bool
    sample_rate: int
    rate_in_config: bool  # MERT-v1 also states its rate as config.json's `sample_rate`
    preprocessor: dict
    config_fields: dict = field(default_factory=dict)  # values that differ from HubertConfig's defaults

    @property
    def name(self) -> str:
        return self.hub_id.split("/")[1]


def _feature_extractor(rate: int, attention_mask: bool) -> dict:
    return {"do_normalize": True, "feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1,
            "padding_side": "right", "padding_value": 0, "return_attention_mask": attention_mask, "sampling_rate": rate}


LAYOUTS = {
    layout.name: layout for layout in (
        Layout("facebook/hubert-base-ls960", False, 16000, False, _feature_extractor(16000, False)),
        Layout("m-a-p/MERT-v0-public", True, 16000, False, _feature_extractor(16000, True)),
        Layout("m-a-p/MERT-v1-95M", True, 24000, True, _feature_extractor(24000, True), {"activation_dropout": 0.0}),
    )
}


def legacy_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers 5's weight-norm parametrisation names -> the `weight_g`/`weight_v` of older checkpoints."""
    renamed = {}
    for key, tensor in state.items():
        for new, old in WEIGHT_NORM.items():
            key = key.replace(new, old)
        renamed[key] = tensor
    return renamed


def config_json(layout: Layout, config: HubertConfig) -> dict:
    """config.json as the hub repository words it."""
    hubert = config.to_dict()
    if not layout.mert:
        fields = {key: hubert[key] for key in sorted(hubert) if key not in ("transformers_version", "architectures")}
        return {**fields, "_name_or_path": layout.hub_id, "architectures": ["HubertModel"], "model_type": "hubert"}
    fields = {key: hubert[key] for key in MERT_FIELDS}
    fields.update(MERT_EXTRAS, _name_or_path=layout.hub_id, architectures=["MERTModel"], auto_map=MERT_AUTO_MAP,
                  model_type="mert_model", transformers_version="4.24.0")
    if layout.rate_in_config:
        fields["sample_rate"] = layout.sample_rate
    return fields


def write_standin(name: str, out: Path, *, seed: int = 0, small: bool = False) -> Path:
    """Write the stand-in of `name` (a key of LAYOUTS) into out/name; returns the folder."""
    layout = LAYOUTS[name]
    config = HubertConfig(**{**layout.config_fields, **(SMALL if small else {})})
    torch.manual_seed(seed)
    model = HubertModel(config).eval()
    folder = Path(out) / layout.name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config_json(layout, config), indent=2, sort_keys=True) + "\n")
    (folder / "preprocessor_config.json").write_text(json.dumps(layout.preprocessor, indent=2, sort_keys=True) + "\n")
    state = {key: tensor.contiguous() for key, tensor in legacy_names(model.state_dict()).items()}
    torch.save(state, folder / "pytorch_model.bin")
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"which stand-ins ({', '.join(LAYOUTS)}; default: all)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--small", action="store_true", help="same layouts, a tiny network (fast tests)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first stand-in; the next ones add 1")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in LAYOUTS]
    if unknown:
        parser.error(f"unknown stand-in {unknown[0]!r}: choose from {', '.join(LAYOUTS)}")
    for offset, name in enumerate(args.names or LAYOUTS):
        folder = write_standin(name, args.out, seed=args.seed + offset, small=args.small)
        print(f"{LAYOUTS[name].hub_id} stand-in -> {folder}")


if __name__ == "__main__":
    sys.exit(main())
