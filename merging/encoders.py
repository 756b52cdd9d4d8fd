"""Loading HuBERT and MERT encoders into transformers' native HubertModel, without remote code."""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from transformers import HubertConfig, HubertModel

from .state import MergeError, StateDict, check_finite

HUB_TIMEOUT_S = 10.0
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_MERT_TYPES = {"mert_model", "music_hubert"}
# Wrappers around the encoder whose weights carry a prefix (HubertForCTC: "hubert."), and the
# heads beside it that an encoder does not need.
_PREFIXES = ("hubert.", "mert_model.", "mert.", "model.")
_HEADS = ("lm_head.", "projector.", "classifier.", "layer_weights")
_MERT_UNUSED = ("feature_extractor_cqt.",)  # nnAudio CQT kernels; the config refuses an enabled CQT
_LEGACY_WEIGHT_NORM = {  # transformers 4 names of the positional conv's weight norm -> transformers 5 names
    ".weight_g": ".parametrizations.weight.original0",
    ".weight_v": ".parametrizations.weight.original1",
}

# Fields that change weight shapes or the computation: two encoders must agree on all of them.
COMPATIBILITY_FIELDS = (
    "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "conv_dim", "conv_kernel", "conv_stride", "conv_bias", "feat_extract_norm", "feat_extract_activation",
    "do_stable_layer_norm", "num_conv_pos_embeddings", "num_conv_pos_embedding_groups", "conv_pos_batch_norm",
    "hidden_act", "feat_proj_layer_norm", "layer_norm_eps",
)


@dataclass(frozen=True)
class Encoder:
    """A loaded encoder: an eval-mode HubertModel that the library never mutates, and how to feed it."""

    model: HubertModel
    sample_rate: int
    normalize: bool  # zero-mean/unit-variance input, as the checkpoint's feature extractor says
    name: str
    source: str

    @property
    def config(self) -> HubertConfig:
        return self.model.config

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def state_dict(self) -> StateDict:
        """The model's weights (detached, sharing memory with the model: do not mutate)."""
        return {name: tensor.detach() for name, tensor in self.model.state_dict().items()}


def load_encoder(
    source: str | Path,
    *,
    allowed_roots: Sequence[Path] | None = None,
    allowed_hub_ids: Sequence[str] | None = None,
    device: str | torch.device = "cpu",
) -> Encoder:
    """Load a HuBERT or MERT checkpoint from a local save_pretrained directory or a hub id (`org/name`).

    `allowed_roots` / `allowed_hub_ids` restrict where it may come from (None: anywhere).
    """
    text = str(source)
    local = Path(text).expanduser()
    if local.exists() or not _HUB_ID.match(text):
        directory = _allowed_directory(local, allowed_roots)
        name = directory.name
    else:
        if allowed_hub_ids is not None and text not in allowed_hub_ids:
            allowed = ", ".join(allowed_hub_ids) or "none"
            raise MergeError(f"hub id '{text}' is not one of the allowed encoders: {allowed}")
        directory = _download(text)
        name = text.split("/")[1]
    raw = _read_json(directory / "config.json", required=True)
    preprocessor = _read_json(directory / "preprocessor_config.json", required=False)
    is_mert = _is_mert(raw)
    config = config_from_mert(raw, text)  # also right for HuBERT: a MERT config without MERT's extensions
    state = _rename_keys(_read_weights(directory), drop=_MERT_UNUSED if is_mert else ())
    model = _build(config, state, what=f"checkpoint '{text}'", device=device, copy=False)
    normalize = bool(preprocessor.get("do_normalize", False))
    return Encoder(model, _sample_rate(preprocessor, raw, text), normalize, name, text)


def encoder_from_state(
    config: HubertConfig,
    state: StateDict,
    *,
    sample_rate: int,
    normalize: bool,
    name: str,
    source: str,
    device: str | torch.device = "cpu",
) -> Encoder:
    """A fresh eval-mode HubertModel holding a copy of `state` (checked: same keys/shapes, finite)."""
    model = build_model(config, state, what=f"weights of '{name}'", device=device)
    return Encoder(model, sample_rate, normalize, name, source)


def build_model(
    config: HubertConfig, state: StateDict, *, what: str = "weights", device: str | torch.device = "cpu"
) -> HubertModel:
    """An eval-mode HubertModel holding a float32 copy of `state`; MergeError if keys, shapes or values are wrong."""
    return _build(config, _rename_keys(state), what=what, device=device, copy=True)


def check_compatible(a: HubertConfig, b: HubertConfig, names: tuple[str, str] = ("speech", "music")) -> None:
    """Raise MergeError naming the first architecture field on which the two configs differ.

    Sample rates may differ (audio is resampled per encoder); callers can compare `Encoder.sample_rate`.
    """
    for field in COMPATIBILITY_FIELDS:
        value_a, value_b = _comparable(getattr(a, field, None)), _comparable(getattr(b, field, None))
        if value_a != value_b:
            raise MergeError(
                f"incompatible encoders: {field} is {value_a} in '{names[0]}' but {value_b} in '{names[1]}'"
            )


def config_from_mert(raw: dict[str, Any], source: str = "MERT checkpoint") -> HubertConfig:
    """Translate a MERT (or HuBERT) config.json into the HubertConfig of the same network.

    Refuses MERT's extensions that HubertModel lacks; ignores fields HubertConfig does not know.
    """
    # MERT's extensions beyond HuBERT: a CQT front end concatenated to the CNN features, and DeepNorm
    # residual scaling. HubertModel has neither. (`attention_relax` only acts inside DeepNorm layers,
    # and there only as a softmax-invariant max subtraction.)
    if raw.get("feature_extractor_cqt"):
        raise MergeError(f"'{source}' needs MERT's CQT front end (feature_extractor_cqt=true), which HubertModel lacks")
    if raw.get("deepnorm"):
        raise MergeError(f"'{source}' uses MERT's DeepNorm residual scaling (deepnorm=true), which HubertModel lacks")
    # MERTConfig's defaults equal HubertConfig's for every shared field, so absent fields mean the same.
    fields = {key: value for key, value in raw.items() if key in HubertConfig.__annotations__}
    try:
        return HubertConfig.from_dict(fields)
    except Exception as error:  # strict-dataclass validation: a readable reason is enough
        raise MergeError(f"'{source}' has an invalid config.json: {_one_line(error)}") from None


def _sample_rate(preprocessor: dict[str, Any], raw: dict[str, Any], source: str) -> int:
    """The feature extractor's rate, else MERT's `sample_rate` field, else by MERT version (v1: 24 kHz), else 16 kHz."""
    rate = preprocessor.get("sampling_rate") or raw.get("sample_rate")
    if rate is None:
        return 24000 if re.search(r"mert-v1", source, re.IGNORECASE) else 16000
    if not isinstance(rate, int) or isinstance(rate, bool) or rate <= 0:
        raise MergeError(f"'{source}' gives an invalid sample rate: {rate!r}")
    return rate


def _is_mert(raw: dict[str, Any]) -> bool:
    model_type = raw.get("model_type")
    architectures = " ".join(raw.get("architectures") or [])
    if model_type in _MERT_TYPES or "MERT" in architectures or "MusicHubert" in architectures:
        return True
    if model_type == "hubert":
        return False
    described = f"'{model_type}' model ({architectures or 'no architectures'})"
    raise MergeError(f"config.json describes a {described}, not HuBERT or MERT")


def _allowed_directory(path: Path, allowed_roots: Sequence[Path] | None) -> Path:
    resolved = path.resolve()
    if allowed_roots is not None and not any(resolved.is_relative_to(Path(root).resolve()) for root in allowed_roots):
        raise MergeError(f"'{path}' is outside the allowed model folders")
    if not resolved.is_dir():
        raise MergeError(f"no such model directory: '{path}'")
    return resolved


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _download(repo_id: str) -> Path:
    """Fetch config, preprocessor config and weights of `repo_id` (from the local cache if the hub is unreachable)."""
    from huggingface_hub import HfApi, snapshot_download

    def fail(reason: str) -> MergeError:
        return MergeError(f"could not download '{repo_id}' from the Hugging Face hub: {reason}")

    def snapshot(weights: str, **kwargs) -> Path:
        patterns = ["config.json", "preprocessor_config.json", weights]
        return Path(snapshot_download(repo_id, allow_patterns=patterns, **kwargs))

    if _hub_offline():
        try:
            return snapshot(_WEIGHT_FILES[0], local_files_only=True)
        except Exception:
            raise fail("HF_HUB_OFFLINE=1 is set and it is not in the local cache") from None
    try:
        # Resolve the revision with a timeout first: later calls pinned to a commit skip the
        # untimed repo-info request, so an unreachable hub fails in seconds, not minutes.
        revision = HfApi().repo_info(repo_id, timeout=HUB_TIMEOUT_S).sha
    except Exception as error:
        try:
            return snapshot(_WEIGHT_FILES[0], local_files_only=True)
        except Exception:
            raise fail(_one_line(error)) from None
    try:
        directory = snapshot(_WEIGHT_FILES[0], revision=revision, etag_timeout=HUB_TIMEOUT_S)
        if not (directory / _WEIGHT_FILES[0]).exists():
            directory = snapshot(_WEIGHT_FILES[1], revision=revision, etag_timeout=HUB_TIMEOUT_S)
    except Exception as error:
        raise fail(_one_line(error)) from None
    return directory


def _read_json(path: Path, required: bool) -> dict[str, Any]:
    if not path.is_file():
        if required:
            raise MergeError(f"'{path.parent}' has no {path.name}")
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MergeError(f"cannot read '{path}': {_one_line(error)}") from None
    if not isinstance(data, dict):
        raise MergeError(f"'{path}' does not hold a JSON object")
    return data


def _read_weights(directory: Path) -> StateDict:
    for filename in _WEIGHT_FILES:
        path = directory / filename
        if path.is_file():
            try:
                if path.suffix == ".safetensors":
                    from safetensors.torch import load_file

                    state = load_file(path)
                else:
                    state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as error:
                raise MergeError(f"cannot read weights '{path}': {_one_line(error)}") from None
            if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
                raise MergeError(f"'{path}' does not hold a dictionary of tensors")
            return state
    raise MergeError(f"'{directory}' has no weights ({' or '.join(_WEIGHT_FILES)})")


def _rename_keys(state: StateDict, drop: tuple[str, ...] = ()) -> StateDict:
    """Bring checkpoint key names to HubertModel's: strip a wrapper prefix, drop heads, new weight-norm names."""
    for prefix in _PREFIXES:
        if any(k.startswith(prefix) for k in state) and all(k.startswith((prefix, *_HEADS)) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            break
    renamed = {}
    for key, tensor in state.items():
        if key.startswith(drop):
            continue
        for old, new in _LEGACY_WEIGHT_NORM.items():
            if key.startswith("encoder.pos_conv_embed.conv") and key.endswith(old):
                key = key[: -len(old)] + new
        renamed[key] = tensor
    return renamed


def _build(config: HubertConfig, state: StateDict, *, what: str, device, copy: bool) -> HubertModel:
    """A HubertModel holding `state`, after checking keys, shapes and finiteness; nothing escapes on error."""
    try:
        with torch.device("meta"):  # no random init: every tensor is assigned from `state` below
            model = HubertModel(config)
    except Exception as error:
        raise MergeError(f"{what}: the config does not describe a valid HubertModel: {_one_line(error)}") from None
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    if missing:
        raise MergeError(f"{what} lacks weight '{missing[0]}'")
    extra = [k for k in state if k not in expected]
    if extra:
        raise MergeError(f"{what} has unexpected weight '{extra[0]}'")
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise MergeError(
                f"{what}: weight '{key}' has shape {tuple(state[key].shape)} but the config needs {tuple(tensor.shape)}"
            )
    check_finite(state, what)
    weights = {
        key: tensor.to(device=device, dtype=torch.float32 if tensor.is_floating_point() else tensor.dtype, copy=copy)
        for key, tensor in state.items()
    }
    model.load_state_dict(weights, strict=True, assign=True)
    return model.eval()


def _comparable(value: Any) -> Any:
    return tuple(value) if isinstance(value, (list, tuple)) else value


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def random_init(like: Encoder, seed: int = 0) -> Encoder:
    """An encoder of `like`'s architecture with freshly initialised weights (the benchmark's "random init" row)."""
    torch.manual_seed(seed)
    model = HubertModel(like.config).eval()
    return Encoder(model=model, sample_rate=like.sample_rate, normalize=like.normalize, name="random init", source=f"seed {seed}")
