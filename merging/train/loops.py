"""The three training loops of the built-in encoders: HuBERT-style masked prediction, DistilHuBERT-style
layer distillation (one or several teachers) and low-drift fine-tuning on a clip-level task."""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm
from transformers import HubertModel


@dataclass(frozen=True)
class Schedule:
    steps: int
    batch_size: int = 32
    lr: float = 5e-4
    warmup: float = 0.08  # fraction of steps with a linear warm-up, then linear decay to zero
    hold: float = 0.0  # fraction of steps at the peak rate after the warm-up (tri-stage schedule)

    def factor(self, step: int) -> float:
        warm, hold = self.warmup * self.steps, (self.warmup + self.hold) * self.steps
        if step < warm:
            return (step + 1) / warm
        if step < hold:
            return 1.0
        return max(0.0, (self.steps - step) / max(1.0, self.steps - hold))


def span_mask(batch: int, frames: int, prob: float, length: int, generator: torch.Generator) -> torch.Tensor:
    """(batch, frames) bool: spans of `length` frames starting at each frame with probability `prob`,
    at least one span per row (HuBERT's masking)."""
    starts = torch.rand(batch, frames, generator=generator) < prob
    starts[torch.arange(batch), torch.randint(frames, (batch,), generator=generator)] = True
    mask = torch.zeros(batch, frames + length, dtype=torch.bool)
    for offset in range(length):
        mask[:, offset:offset + frames] |= starts
    return mask[:, :frames]


def _forward(model: HubertModel, audio: torch.Tensor, mask: torch.Tensor | None = None):
    """The model's output with exactly `mask` applied (an explicit empty mask when None: in training
    mode a HubertModel would otherwise draw its own masks from config.mask_time_prob)."""
    if mask is None:
        frames = int(model._get_feat_extract_output_lengths(audio.shape[-1]))
        mask = torch.zeros(len(audio), frames, dtype=torch.bool, device=audio.device)
    return model(audio, mask_time_indices=mask)


def _optimise(
    groups: Sequence[tuple[Sequence[nn.Parameter], float]],
    schedule: Schedule,
    loss_of_batch: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
    num_clips: int,
    seed: int,
    what: str,
) -> dict:
    """AdamW with gradient clipping over random batches of clip indices, each group of parameters at its
    scale of the schedule's learning rate; returns the run's record."""
    generator = torch.Generator().manual_seed(seed)
    params = [p for group, _ in groups for p in group]
    optimizer = torch.optim.AdamW([{"params": list(group), "lr": schedule.lr * scale} for group, scale in groups],
                                  lr=schedule.lr, betas=(0.9, 0.98), weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule.factor)
    losses, started = [], time.perf_counter()
    bar = tqdm(range(schedule.steps), desc=what, unit="step")
    for _ in bar:
        batch = torch.randint(num_clips, (schedule.batch_size,), generator=generator)
        loss = loss_of_batch(batch, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}", refresh=False)
    tail = losses[-max(1, len(losses) // 10):]
    return {"steps": schedule.steps, "batch_size": schedule.batch_size, "lr": schedule.lr,
            "first_loss": round(losses[0], 4), "final_loss": round(sum(tail) / len(tail), 4),
            "seconds": round(time.perf_counter() - started, 1)}


def masked_prediction(
    model: HubertModel,
    audio: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    schedule: Schedule,
    *,
    seed: int,
    mask_prob: float = 0.08,
    mask_length: int = 5,
    distributions: Sequence[torch.Tensor] = (),
    frontend_lr: float = 1.0,
    what: str = "masked prediction",
) -> dict:
    """HuBERT pre-training: predict each masked frame's cluster label (cross-entropy on masked frames)
    from a linear head on the last layer. Each of `distributions` (clips, frames, dims), per-frame
    target distributions such as the energy over semitones, adds a linear head trained by
    cross-entropy to it on every frame that has one (rows of zeros have none). The CNN front end
    learns at `frontend_lr` times the rate (HuBERT scales its gradient by 0.1). Heads are dropped
    afterwards. Every tensor lives on the model's device."""
    device = audio.device
    hidden_size = model.config.hidden_size
    head = nn.Linear(hidden_size, num_classes).to(device)
    dist_heads = nn.ModuleList(nn.Linear(hidden_size, d.shape[-1]) for d in distributions).to(device)
    model.train()

    def loss_of_batch(batch, generator):
        batch = batch.to(device)
        target = labels[batch]
        mask = span_mask(len(batch), target.shape[1], mask_prob, mask_length, generator).to(device)
        hidden = _forward(model, audio[batch], mask).last_hidden_state
        loss = F.cross_entropy(head(hidden[mask]), target[mask])
        for dist_head, distribution in zip(dist_heads, distributions):
            wanted = distribution[batch]
            has_target = wanted.sum(-1) > 0
            loss = loss - (wanted[has_target] * F.log_softmax(dist_head(hidden[has_target]), -1)).sum(-1).mean()
        return loss

    frontend = {id(p) for p in model.feature_extractor.parameters()}
    groups = [([p for p in model.parameters() if id(p) in frontend], frontend_lr),
              ([p for p in model.parameters() if id(p) not in frontend] + [*head.parameters(), *dist_heads.parameters()], 1.0)]
    record = _optimise(groups, schedule, loss_of_batch, len(audio), seed, what)
    model.eval()
    objective = f"masked prediction of {num_classes} k-means clusters"
    if distributions:
        dims = " and ".join(str(d.shape[-1]) for d in distributions)
        objective += f" + cross-entropy to per-frame energy distributions over {dims} pitch bins"
    return record | {"objective": objective, "mask_prob": mask_prob, "mask_length": mask_length, "frontend_lr": frontend_lr}


def distillation_loss(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """DistilHuBERT's loss for one head: L1 plus −log σ(cosine similarity), averaged over frames."""
    cosine = F.cosine_similarity(predicted, target, dim=-1)
    return (predicted - target).abs().mean() - F.logsigmoid(cosine).mean()


@torch.no_grad()
def _teacher_layers(teacher: HubertModel, audio: torch.Tensor, layers: Sequence[int]) -> list[torch.Tensor]:
    hidden = teacher(audio, output_hidden_states=True).hidden_states
    return [hidden[layer] for layer in layers]


def distill(
    student: HubertModel,
    teachers: Sequence[tuple[HubertModel, Sequence[int]]],
    audio: torch.Tensor,
    schedule: Schedule,
    *,
    seed: int,
    what: str = "distillation",
) -> dict:
    """Layer-to-layer distillation: one linear prediction head per (teacher, teacher layer) on the
    student's last layer; the losses of all heads and teachers are summed. Heads are dropped afterwards."""
    device = audio.device
    for teacher, _ in teachers:
        teacher.eval().requires_grad_(False)
    heads = nn.ModuleList(
        nn.Linear(student.config.hidden_size, teacher.config.hidden_size) for teacher, layers in teachers for _ in layers
    ).to(device)
    student.train()

    def loss_of_batch(batch, generator):
        x = audio[batch.to(device)]
        last = _forward(student, x).last_hidden_state
        targets = [t for teacher, layers in teachers for t in _teacher_layers(teacher, x, layers)]
        return sum(distillation_loss(head(last), target) for head, target in zip(heads, targets))

    record = _optimise([([*student.parameters(), *heads.parameters()], 1.0)], schedule, loss_of_batch, len(audio), seed, what)
    student.eval()
    layers = [list(layers) for _, layers in teachers]
    return record | {"objective": f"L1 − log σ(cos) per prediction head, teacher layers {layers}, losses summed"}


def finetune_classifier(
    model: HubertModel,
    audio: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    schedule: Schedule,
    *,
    seed: int,
    frozen: float = 0.1,
    what: str = "fine-tuning",
) -> dict:
    """Speech-FT's stable fine-tuning: a linear classifier on the time-pooled last layer; the encoder is
    frozen for the first `frozen` fraction of steps (only the head learns), then trained at the schedule's
    (small) rate. The head is dropped afterwards."""
    device = audio.device
    head = nn.Linear(model.config.hidden_size, num_classes).to(device)
    frozen_steps, step = int(frozen * schedule.steps), [0]
    model.train()

    def loss_of_batch(batch, generator):
        batch = batch.to(device)
        model.requires_grad_(step[0] >= frozen_steps)
        step[0] += 1
        pooled = _forward(model, audio[batch]).last_hidden_state.mean(1)
        return F.cross_entropy(head(pooled), labels[batch])

    record = _optimise([([*model.parameters(), *head.parameters()], 1.0)], schedule, loss_of_batch, len(audio), seed, what)
    model.requires_grad_(True).eval()
    return record | {"objective": f"cross-entropy of {num_classes} keywords, encoder frozen for the first "
                                  f"{frozen_steps} steps", "schedule": "warm-up, constant, linear decay"}
