"""Saving merged encoders in transformers format, atomically, and packing them for download."""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import tempfile
import uuid
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import HubertConfig, Wav2Vec2FeatureExtractor

from .encoders import build_model
from .state import MergeError, StateDict

MERGE_CONFIG = "merge_config.json"


def save_encoder(
    out_dir: str | Path,
    state: StateDict,
    config: HubertConfig,
    *,
    sample_rate: int,
    normalize: bool,
    merge_config: dict | None = None,
) -> Path:
    """Write `state` as a transformers HubertModel directory (config, safetensors, preprocessor config,
    and merge_config.json when given). The directory appears complete or not at all."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise MergeError(f"'{out_dir}' exists and is not a directory")
    model = build_model(config, state, what="merged weights")  # checks keys, shapes and values; copies
    record = None if merge_config is None else _to_json(merge_config)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        partial.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary model folder
        saved_config = copy.deepcopy(config)
        saved_config.architectures = ["HubertModel"]
        saved_config.save_pretrained(partial)
        save_file(model.state_dict(), partial / "model.safetensors", metadata={"format": "pt"})
        Wav2Vec2FeatureExtractor(
            feature_size=1, sampling_rate=int(sample_rate), padding_value=0.0, do_normalize=bool(normalize),
            return_attention_mask=config.feat_extract_norm == "layer",
        ).save_pretrained(partial)
        if record is not None:
            (partial / MERGE_CONFIG).write_text(record)
        for file in partial.iterdir():  # safetensors writes its file private (0600); zip members keep these modes
            file.chmod(0o644)
        _move_into_place(partial, out_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return out_dir


def load_merge_config(path: str | Path) -> dict:
    """The merge record of a saved directory (or of the merge_config.json file itself)."""
    path = Path(path)
    if path.is_dir():
        path = path / MERGE_CONFIG
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise MergeError(f"no merge record at '{path}'") from None
    except (OSError, json.JSONDecodeError) as error:
        raise MergeError(f"cannot read merge record '{path}': {error}") from None


def zip_encoder_dir(src_dir: str | Path, zip_path: str | Path) -> Path:
    """Pack a saved directory into `zip_path` (one top folder named like the directory), atomically."""
    src_dir, zip_path = Path(src_dir), Path(zip_path)
    if not src_dir.is_dir():
        raise MergeError(f"no such directory: '{src_dir}'")
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(prefix=f".{zip_path.name}.partial-", dir=zip_path.parent)
    os.close(handle)
    try:
        with zipfile.ZipFile(partial, "w") as archive:
            for file in sorted(p for p in src_dir.rglob("*") if p.is_file() and not p.is_symlink()):
                # weights barely compress; deflating them would only cost time
                method = zipfile.ZIP_STORED if file.suffix in (".safetensors", ".bin") else zipfile.ZIP_DEFLATED
                archive.write(file, Path(src_dir.name, file.relative_to(src_dir)).as_posix(), compress_type=method)
        os.chmod(partial, 0o644)
        os.replace(partial, zip_path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    return zip_path


def _move_into_place(partial: Path, out_dir: Path) -> None:
    """Rename the finished `partial` to `out_dir`, replacing an existing one only now that the new one is whole."""
    if not out_dir.exists():
        partial.rename(out_dir)
        return
    old = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
    out_dir.rename(old)
    try:
        partial.rename(out_dir)
    except BaseException:
        old.rename(out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _to_json(record: dict) -> str:
    try:
        return json.dumps(record, indent=2, default=_json_value)
    except (TypeError, ValueError) as error:
        raise MergeError(f"merge_config is not JSON-serialisable: {error}") from None


def _json_value(value: Any) -> Any:
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (Path, torch.dtype, torch.device)):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"value of type {type(value).__name__} is not JSON-serialisable")
