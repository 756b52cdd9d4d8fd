"""The recipe of the built-in encoders in assets/models: data, configs, objectives, steps, and cards.

`python -m merging.train all` renders the training audio (cached in runs/train-data/) and rebuilds
every model; sub-commands rebuild one model each (see __main__.py). Models that others start from
(the speech and music encoders for the students and the fine-tuned copy, the base for the students)
are read back from the output folder, so sub-commands can run one at a time.
"""
from __future__ import annotations

import functools
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import HubertConfig, HubertModel

from ..audio import load_audio
from ..catalogue import MODEL_NAMES
from ..checkpoint import save_encoder
from ..encoders import load_encoder
from ..synth import KEYWORDS, SAMPLE_RATE, Clip, music_jobs, render, require_tools, speech_jobs
from ..synth.assets import save_clip
from .loops import Schedule, distill, finetune_classifier, masked_prediction
from .targets import cluster_labels, music_features, pitch_distributions, speech_features

ROOT = Path(__file__).resolve().parents[2]
MODELS_DIR = ROOT / "assets" / "models"
DATA_DIR = ROOT / "runs" / "train-data"
CLUSTERS = 100
FRONTEND_LR = 0.1  # the CNN front end learns 10x slower in pre-training (HuBERT's feature_grad_mult)
TEACHER_LAYERS = (2, 3, 4)  # the teacher layers each student predicts (DistilHuBERT: 4, 8, 12 of 12)


@dataclass(frozen=True)
class TrainingSet:
    name: str  # "speech" or "music"
    count: int
    seed: int  # synth seed: disjoint from the shipped clips' seeds (1000-5006)

    def jobs(self):
        return speech_jobs(self.count, self.seed) if self.name == "speech" else music_jobs(self.count, self.seed)


TRAINING_SETS = {"speech": TrainingSet("speech", 4000, 7000), "music": TrainingSet("music", 4000, 8000)}


@dataclass(frozen=True)
class Recipe:
    name: str
    data: tuple[str, ...]  # training sets it learns from
    schedule: Schedule
    seed: int
    summary: str


RECIPES = {
    "speech": Recipe(MODEL_NAMES["speech"], ("speech",), Schedule(1200), 101,
                     "HuBERT-style masked prediction of MFCC k-means clusters on synthetic speech"),
    "music": Recipe(MODEL_NAMES["music"], ("music",), Schedule(1200), 202,
                    "MERT-style masked prediction of log-mel + chroma k-means clusters, plus which semitones and pitch classes sound in each frame, on synthetic music"),
    "student_base": Recipe(MODEL_NAMES["student_base"], ("speech", "music"), Schedule(1000), 303,
                           "short masked-prediction pre-training on speech and music (both label sets, plus the "
                           "sounding semitones and pitch classes of every frame): the students' shared init"),
    "student_speech": Recipe(MODEL_NAMES["student_speech"], ("speech",), Schedule(500), 404,
                             "DistilHuBERT-style student of tiny-hubert-speech, initialised from tiny-base"),
    "student_music": Recipe(MODEL_NAMES["student_music"], ("music",), Schedule(500), 505,
                            "DistilHuBERT-style student of tiny-mert-music, initialised from tiny-base"),
    "student_multi": Recipe(MODEL_NAMES["student_multi"], ("speech", "music"), Schedule(500), 606,
                            "one student distilled from both teachers at once (one head set each, losses summed)"),
    "speech_ft": Recipe(MODEL_NAMES["speech_ft"], ("speech",), Schedule(400, lr=1e-4, warmup=0.1, hold=0.4), 707,
                        "tiny-hubert-speech fine-tuned on keyword classification with Speech-FT's stable recipe"),
}


def encoder_config(num_hidden_layers: int = 4) -> HubertConfig:
    """HuBERT-base's layout shrunk: 7-layer CNN (128 channels, group norm), hidden 192, 4 heads, FFN 768."""
    return HubertConfig(
        hidden_size=192, num_hidden_layers=num_hidden_layers, num_attention_heads=4, intermediate_size=768,
        conv_dim=(128,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
        hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0, final_dropout=0.0,
        layerdrop=0.0, mask_time_prob=0.05,  # HuBERT's default; the training loop always passes its own masks
    )


# ---- data ---------------------------------------------------------------------------------------

def render_training_set(name: str, out: Path = DATA_DIR, workers: int | None = None) -> Path:
    """Render a training set to out/<name>/ (Ogg Opus, like the shipped clips) with a labels.json."""
    spec = TRAINING_SETS[name]
    folder = out / name
    if (folder / "labels.json").is_file():
        return folder
    require_tools("espeak-ng" if name == "speech" else "fluidsynth")
    folder.mkdir(parents=True, exist_ok=True)
    clips: list[Clip] = render(spec.jobs(), workers, what=f"{name} training clips")
    labels = []
    for i, clip in enumerate(clips):
        save_clip(folder / f"{i:05d}.ogg", clip)
        labels.append(clip.labels)
    (folder / "labels.json").write_text(json.dumps({"seed": spec.seed, "labels": labels}))
    return folder


@functools.lru_cache(maxsize=2)
def load_training_set(name: str, out: Path = DATA_DIR) -> tuple[torch.Tensor, list[dict]]:
    """(clips, samples) float32 audio and the per-clip labels of a rendered training set (decoded once
    per process: every model of `all` reuses it; callers must not modify it)."""
    folder = render_training_set(name, out)
    labels = json.loads((folder / "labels.json").read_text())["labels"]
    audio = np.stack([load_audio(folder / f"{i:05d}.ogg", SAMPLE_RATE)[0] for i in range(len(labels))])
    return torch.from_numpy(audio), labels


# ---- models -------------------------------------------------------------------------------------

def device_of(choice: str = "auto") -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def _machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA), torch {torch.__version__}"
    return f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}"


def _fresh_model(layers: int, seed: int, device: torch.device) -> HubertModel:
    torch.manual_seed(seed)
    return HubertModel(encoder_config(layers)).to(device)


def _save(key: str, model: HubertModel, record: dict, out: Path) -> Path:
    recipe = RECIPES[key]
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    folder = save_encoder(out / recipe.name, state, model.config, sample_rate=SAMPLE_RATE, normalize=False)
    record = {"model": recipe.name, "summary": recipe.summary, "seed": recipe.seed,
              "data": {name: {"clips": TRAINING_SETS[name].count, "synth_seed": TRAINING_SETS[name].seed, "seconds": 1.0}
                       for name in recipe.data},
              "parameters": sum(p.numel() for p in model.parameters()), **record}
    (folder / "training.json").write_text(json.dumps(record, indent=2))
    return folder


def _load(key: str, out: Path, device: torch.device) -> HubertModel:
    folder = out / RECIPES[key].name
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is missing: build it first (python -m merging.train {key})")
    model = load_encoder(folder).model
    return model.to(device).float()


def _labels(audio: torch.Tensor, kind: str, seed: int) -> torch.Tensor:
    features = (speech_features if kind == "speech" else music_features)(audio)
    return cluster_labels(features, CLUSTERS, seed=seed)


def _timed(fn, device: torch.device) -> tuple[object, dict]:
    started = time.perf_counter()
    result = fn()
    return result, {"wall_seconds": round(time.perf_counter() - started, 1), "machine": _machine(device)}


def train_teacher(key: str, out: Path = MODELS_DIR, device: torch.device | None = None) -> Path:
    """tiny-hubert-speech or tiny-mert-music: 4 layers, masked prediction on its own domain."""
    device = device or device_of()
    recipe, kind = RECIPES[key], RECIPES[key].data[0]

    def run():
        audio, _ = load_training_set(kind)
        audio = audio.to(device)
        labels = _labels(audio, kind, recipe.seed)
        distributions = pitch_distributions(audio) if kind == "music" else ()
        model = _fresh_model(4, recipe.seed, device)
        return model, masked_prediction(model, audio, labels, CLUSTERS, recipe.schedule, seed=recipe.seed,
                                        distributions=distributions, frontend_lr=FRONTEND_LR, what=recipe.name)

    (model, record), timing = _timed(run, device)
    return _save(key, model, {**record, **timing}, out)


def train_base(out: Path = MODELS_DIR, device: torch.device | None = None) -> Path:
    """tiny-base: the student shape (2 layers), masked prediction on speech and music; music clusters
    are numbered after the speech ones, so one head predicts both. The pitch targets cover every clip
    (speech has a voice's pitch too); without them pre-training erases pitch (pitch class falls below
    a random encoder's)."""
    device = device or device_of()
    recipe = RECIPES["student_base"]

    def run():
        parts = [load_training_set(kind)[0].to(device) for kind in ("speech", "music")]
        labels = torch.cat([_labels(parts[0], "speech", recipe.seed), _labels(parts[1], "music", recipe.seed) + CLUSTERS])
        audio = torch.cat(parts)
        model = _fresh_model(2, recipe.seed, device)
        return model, masked_prediction(model, audio, labels, 2 * CLUSTERS, recipe.schedule, seed=recipe.seed,
                                        distributions=pitch_distributions(audio), frontend_lr=FRONTEND_LR,
                                        what=recipe.name)

    (model, record), timing = _timed(run, device)
    return _save("student_base", model, {**record, **timing}, out)


def train_student(key: str, out: Path = MODELS_DIR, device: torch.device | None = None) -> Path:
    """A 2-layer student initialised from tiny-base, distilled from one teacher or (multi) both."""
    device = device or device_of()
    recipe = RECIPES[key]
    teacher_keys = recipe.data  # a student learns from its teachers' own training audio

    def run():
        audio = torch.cat([load_training_set(kind)[0] for kind in recipe.data]).to(device)
        teachers = [(_load(t, out, device), TEACHER_LAYERS) for t in teacher_keys]
        student = _load("student_base", out, device)
        torch.manual_seed(recipe.seed)
        return student, distill(student, teachers, audio, recipe.schedule, seed=recipe.seed, what=recipe.name)

    (model, record), timing = _timed(run, device)
    record["teachers"] = [RECIPES[t].name for t in teacher_keys]
    record["init"] = RECIPES["student_base"].name
    return _save(key, model, {**record, **timing}, out)


def train_speech_ft(out: Path = MODELS_DIR, device: torch.device | None = None) -> Path:
    """tiny-hubert-speech fine-tuned on the keywords of its own training clips (not the probe clips)."""
    device = device or device_of()
    recipe = RECIPES["speech_ft"]

    def run():
        audio, labels = load_training_set("speech")
        keywords = torch.tensor([KEYWORDS.index(row["keyword"]) for row in labels], device=device)
        model = _load("speech", out, device)
        torch.manual_seed(recipe.seed)
        return model, finetune_classifier(model, audio.to(device), keywords, len(KEYWORDS), recipe.schedule,
                                          seed=recipe.seed, what=recipe.name)

    (model, record), timing = _timed(run, device)
    record["init"] = RECIPES["speech"].name
    return _save("speech_ft", model, {**record, **timing}, out)


def train(key: str, out: Path = MODELS_DIR, device: torch.device | None = None) -> Path:
    """Build one model of the recipe by its key (see RECIPES)."""
    if key in ("speech", "music"):
        return train_teacher(key, out, device)
    if key == "student_base":
        return train_base(out, device)
    if key.startswith("student_"):
        return train_student(key, out, device)
    if key == "speech_ft":
        return train_speech_ft(out, device)
    raise KeyError(f"unknown model '{key}': one of {', '.join(RECIPES)}")
