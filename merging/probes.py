"""Probe classifiers: how much speech and music an encoder's features carry (SUPERB/MARBLE style).

Per clip, every layer's hidden states are mean-pooled over time; a probe learns a softmax weight per
layer (SUPERB's weighted sum) and a linear classifier on top, fitted full-batch with L-BFGS on the
train split and scored on the test split. Features of an encoder are cached by the hash of its
weights, so an unchanged encoder is never run twice on the same clips.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .features import encoder_input, hidden_states
from .state import MergeError, state_checksum, torch_threads
from .stats import average_interval


@dataclass(frozen=True)
class ProbeTask:
    name: str
    domain: str  # "speech" | "music"
    labels: tuple[str, ...]
    train: tuple[int, ...]  # indices into the suite's clips
    train_y: tuple[int, ...]
    test: tuple[int, ...]
    test_y: tuple[int, ...]


@torch.no_grad()
def layer_features(encoder, clips: Sequence[np.ndarray], sample_rate: int, batch_size: int = 16) -> torch.Tensor:
    """(clips, layers + 1, hidden) float32 on CPU: each layer's hidden states mean-pooled over time."""
    order = sorted(range(len(clips)), key=lambda i: len(clips[i]))
    out: list[torch.Tensor | None] = [None] * len(clips)
    start = 0
    while start < len(order):
        length = len(clips[order[start]])
        stop = start
        while stop < len(order) and stop - start < batch_size and len(clips[order[stop]]) == length:
            stop += 1
        batch = [clips[i] for i in order[start:stop]]
        hidden = hidden_states(encoder.model, encoder_input(encoder, batch, sample_rate))
        pooled = torch.stack([h.mean(1) for h in hidden], dim=1).float().cpu()
        for row, index in enumerate(order[start:stop]):
            out[index] = pooled[row]
        start = stop
    return torch.stack(out)


@dataclass
class LinearProbe:
    """Softmax-weighted sum of standardised layer features, then a linear classifier."""

    mean: torch.Tensor
    std: torch.Tensor
    layer_logits: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        x = (features - self.mean) / self.std
        mixed = (torch.softmax(self.layer_logits, 0)[None, :, None] * x).sum(1)
        return mixed @ self.weight + self.bias

    def layer_weights(self) -> list[float]:
        return torch.softmax(self.layer_logits, 0).tolist()


def fit_probe(features: torch.Tensor, targets: torch.Tensor, num_classes: int, *, l2: float = 1e-3,
              max_iter: int = 100, seed: int = 0) -> LinearProbe:
    """Full-batch L-BFGS on cross-entropy + L2; deterministic for a given seed."""
    generator = torch.Generator().manual_seed(seed)
    mean, std = features.mean(0, keepdim=True)[0], features.std(0, keepdim=True)[0] + 1e-5
    x = (features - mean) / std
    layers, hidden = features.shape[1:]
    layer_logits = torch.zeros(layers, requires_grad=True)
    weight = (0.01 * torch.randn(hidden, num_classes, generator=generator)).requires_grad_()
    bias = torch.zeros(num_classes, requires_grad=True)
    params = [layer_logits, weight, bias]
    optimizer = torch.optim.LBFGS(params, lr=1, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        mixed = (torch.softmax(layer_logits, 0)[None, :, None] * x).sum(1)
        loss = torch.nn.functional.cross_entropy(mixed @ weight + bias, targets) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad(), torch_threads(1):  # many small ops: a second thread only waits (10x slower when busy)
        optimizer.step(closure)
    return LinearProbe(mean, std, layer_logits.detach(), weight.detach(), bias.detach())


@dataclass(frozen=True)
class ProbeScores:
    accuracy: dict[str, float]  # task -> percent
    domains: dict[str, str]
    correct: dict[str, tuple[bool, ...]]  # task -> whether each test clip was classified correctly
    clips: dict[str, tuple[int, ...]]  # task -> its test clips (tasks labelling the same clips share them)

    def _tasks(self, domain: str | None) -> list[str]:
        return [task for task in self.accuracy if domain is None or self.domains[task] == domain]

    def average(self, domain: str | None = None) -> float:
        values = [self.accuracy[task] for task in self._tasks(domain)]
        return float(np.mean(values)) if values else float("nan")

    @property
    def test_clips(self) -> dict[str, int]:
        return {task: len(values) for task, values in self.correct.items()}

    def interval(self, domain: str | None = None, *, task: str | None = None, seed: int = 0) -> tuple[float, float]:
        """95 % bootstrap interval over test clips of one task's accuracy, or of a domain's (or the overall) average
        (tasks that label the same clips resampled together)."""
        tasks = [task] if task is not None else self._tasks(domain)
        if not tasks:
            return (float("nan"),) * 2
        return average_interval({t: self.correct[t] for t in tasks}, self.clips, seed=seed)

    def as_row(self) -> dict:
        return {"scores": dict(self.accuracy), "speech_avg": self.average("speech"),
                "music_avg": self.average("music"), "avg": self.average()}


@dataclass
class ProbeSuite:
    """Probe tasks over one shared list of clips (a clip may serve several tasks)."""

    clips: list[np.ndarray]
    tasks: list[ProbeTask]
    sample_rate: int = 16000
    cache_size: int = 8
    batch_size: int = 16  # clips per forward pass when extracting features (16 kept activations in cache best)
    fit_iterations: int = 100  # L-BFGS iterations per probe
    _cache: OrderedDict = field(default_factory=OrderedDict, repr=False)

    def features(self, encoder) -> torch.Tensor:
        key = state_checksum(encoder.state_dict())
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        features = layer_features(encoder, self.clips, self.sample_rate, self.batch_size)
        self._cache[key] = features
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return features

    def validation(self, fraction: float = 1 / 3) -> ProbeSuite:
        """The same clips and feature cache, with the last `fraction` of each task's training clips held out
        as the test split: for choosing a setting without looking at the real test split."""
        tasks = []
        for t in self.tasks:
            keep = len(t.train) - max(1, round(len(t.train) * fraction))
            tasks.append(ProbeTask(t.name, t.domain, t.labels, t.train[:keep], t.train_y[:keep],
                                   t.train[keep:], t.train_y[keep:]))
        return ProbeSuite(self.clips, tasks, self.sample_rate, self.cache_size, self.batch_size, self.fit_iterations,
                          self._cache)

    def fit(self, encoder, seed: int = 0) -> dict[str, LinearProbe]:
        features = self.features(encoder)
        return {task.name: fit_probe(features[list(task.train)], torch.tensor(task.train_y), len(task.labels), seed=seed,
                                     max_iter=self.fit_iterations)
                for task in self.tasks}

    def score(self, encoder, seed: int = 0, probes: dict[str, LinearProbe] | None = None) -> ProbeScores:
        features = self.features(encoder)
        probes = probes or self.fit(encoder, seed)
        accuracy, correct = {}, {}
        for task in self.tasks:
            predicted = probes[task.name].logits(features[list(task.test)]).argmax(1)
            hits = predicted == torch.tensor(task.test_y)
            accuracy[task.name] = 100.0 * hits.float().mean().item()
            correct[task.name] = tuple(hits.tolist())
        return ProbeScores(accuracy, {task.name: task.domain for task in self.tasks}, correct,
                           {task.name: tuple(task.test) for task in self.tasks})

    def predict(self, encoder, clip: np.ndarray, sample_rate: int, probes: dict[str, LinearProbe] | None = None) -> dict[str, dict[str, float]]:
        """Class probabilities per task for one clip of any length (pooled over time)."""
        if clip.ndim != 1 or len(clip) < sample_rate // 10:
            raise MergeError("a probe clip must be mono and at least 0.1 s long")
        if sample_rate != self.sample_rate:
            from .audio import resample

            clip = resample(clip, sample_rate, self.sample_rate)
        probes = probes or self.fit(encoder)
        return class_probabilities(probes, self.tasks, layer_features(encoder, [clip], self.sample_rate))[0]


def class_probabilities(probes: dict[str, LinearProbe], tasks: Sequence[ProbeTask],
                        features: torch.Tensor) -> list[dict[str, dict[str, float]]]:
    """Per clip (a row of `features`), each task's class probabilities by label."""
    per_task = {task.name: torch.softmax(probes[task.name].logits(features), 1).tolist() for task in tasks}
    return [{task.name: dict(zip(task.labels, per_task[task.name][i])) for task in tasks} for i in range(len(features))]


def builtin_suite(root: str | Path | None = None, sample_rate: int = 16000, *,
                  max_train: int | None = None, max_test: int | None = None) -> ProbeSuite:
    """The shipped probe tasks (assets/audio): keyword, speaker, instrument family, pitch class, chord quality.
    Clips shared by several tasks (a note carries its family and its pitch class) are loaded once.
    `max_train` / `max_test` keep only the first clips of each probe set's split (a smaller, faster suite;
    the shipped splits are label-balanced block by block, so a prefix stays close to balanced)."""
    from .audio import load_audio
    from .synth.assets import ASSETS_DIR, load_manifest

    root = Path(root or ASSETS_DIR).resolve()
    manifest = load_manifest(root)
    index: dict[str, int] = {}
    clips: list[np.ndarray] = []

    def indices(rows: list[dict]) -> tuple[int, ...]:
        for row in rows:
            if row["path"] not in index:
                index[row["path"]] = len(clips)
                clips.append(load_audio(root / row["path"], sample_rate)[0])
        return tuple(index[row["path"]] for row in rows)

    tasks = []
    limits = {"train": max_train, "test": max_test}
    for name, info in manifest["tasks"].items():
        labels = tuple(info["labels"])
        split = {s: [f for f in manifest["files"] if f["split"] == s and f["probe_set"] == info["probe_set"]][:limits[s]]
                 for s in ("train", "test")}
        ys = {s: tuple(labels.index(f["labels"][name]) for f in rows) for s, rows in split.items()}
        tasks.append(ProbeTask(name, info["domain"], labels, indices(split["train"]), ys["train"],
                               indices(split["test"]), ys["test"]))
    return ProbeSuite(clips, tasks, sample_rate)
