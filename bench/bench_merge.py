"""Merge speed and alignment cost at HuBERT-base size (random weights), with same-run baselines.

    python bench/bench_merge.py [--device cpu|cuda] [--repeats 5] [--calib-clips 96] [--batch 16] [--skip-merge | --skip-align] [--music MERT-v1-95M] [--threads N]

Prints, for `linear` (into new tensors, and `linear_into` preallocated ones) and for `permute` (apply the
alignment's permutations, then `linear`), the median time and its ratio to `torch.lerp` over
preallocated flat buffers of the same size; then the HuBERT-base invariance check (random
permutations leave hidden states unchanged up to the residual order).

Alignment: full-size stand-ins of facebook/hubert-base-ls960 and m-a-p/MERT-v0-public (written by
scripts/make_standins.py into runs/standins/ when missing) aligned on the built-in calibration clips,
against the plain forward passes of both encoders over the same clips and batches in the same run
(timed before and after the alignment; their mean is the baseline), in wall seconds and in this
process's CPU seconds (which a shared machine inflates less). Targets: activations + correlation
<= 1.5x the forward passes, the whole alignment (assignments included) <= 2x.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import HubertConfig, HubertModel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from merging.align import PAPER_COMPONENTS, assignment_workers, correlation_align  # noqa: E402
from merging.calibration import builtin_calibration  # noqa: E402
from merging.encoders import load_encoder  # noqa: E402
from merging.features import encoder_input, equal_length_batches  # noqa: E402
from merging.methods import linear, linear_into, merge  # noqa: E402
from merging.spec import COMPONENTS, apply_permutations, hubert_spec, random_permutations  # noqa: E402


def base_config() -> HubertConfig:
    return HubertConfig()  # transformers' defaults are HuBERT Base: 768 hidden, 12 layers, 3072 FFN


def timed(fn, repeats: int, device: str) -> float:
    times = []
    for _ in range(repeats + 1):  # first run warms up allocator and caches
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def random_state(config: HubertConfig, seed: int, device: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.to(device) for k, v in HubertModel(config).eval().state_dict().items()}


class FixedAlignment:
    """An alignment's apply step with given permutations, without solving one."""

    def __init__(self, spec, perms) -> None:
        self.spec, self.perms = spec, perms

    def apply(self, state):
        return apply_permutations(state, self.spec, self.perms)


def bench_merge(device: str, repeats: int) -> None:
    config = base_config()
    speech, music = random_state(config, 0, device), random_state(config, 1, device)
    n = sum(t.numel() for t in speech.values())
    print(f"state dict: {n / 1e6:.1f}M parameters, {len(speech)} tensors, device {device}")
    flat_a, flat_b = torch.cat([t.flatten() for t in speech.values()]), torch.cat([t.flatten() for t in music.values()])
    flat_out = torch.empty_like(flat_a)
    baseline = timed(lambda: torch.lerp(flat_a, flat_b, 0.3, out=flat_out), repeats, device)
    print(f"baseline torch.lerp, flat preallocated buffers: {baseline * 1e3:8.1f} ms")

    t_linear = timed(lambda: linear(speech, music, alpha=0.3), repeats, device)
    print(f"linear (alpha=0.3), new tensors:                {t_linear * 1e3:8.1f} ms  ratio {t_linear / baseline:.2f}x")
    out = {name: torch.empty_like(t) for name, t in speech.items()}
    t_into = timed(lambda: linear_into(out, speech, music, alpha=0.3), repeats, device)
    print(f"linear_into (alpha=0.3), preallocated outputs:  {t_into * 1e3:8.1f} ms  ratio {t_into / baseline:.2f}x")

    spec = hubert_spec(config)
    perms = {k: v.to(device) for k, v in random_permutations(spec, COMPONENTS, torch.Generator().manual_seed(0)).items()}

    t_apply = timed(lambda: apply_permutations(music, spec, perms), repeats, device)
    t_permute = timed(lambda: merge("permute", {"speech": speech, "music": music}, alignment=FixedAlignment(spec, perms), alpha=0.3), repeats, device)
    print(f"apply permutations only (all components):       {t_apply * 1e3:8.1f} ms  ratio {t_apply / baseline:.2f}x")
    print(f"permute (apply permutations + linear):          {t_permute * 1e3:8.1f} ms  ratio {t_permute / baseline:.2f}x")


def bench_pooled_merge(device: str, repeats: int) -> None:
    """The app's merge path (merging.service): weights written straight into the pooled model's parameters
    (inputs vouched finite: the service's encoders are checked when loaded), and a repeated permute with the
    re-ordered music weights kept on the device, against the same lerp."""
    from merging.encoders import Encoder
    from merging.methods import linear_into, permute_into
    from merging.service.pool import weights_of
    from merging.service.weights import KeptWeights, Reordered

    config = base_config()
    speech, music = random_state(config, 0, device), random_state(config, 1, device)
    flat_a, flat_b = torch.cat([t.flatten() for t in speech.values()]), torch.cat([t.flatten() for t in music.values()])
    flat_out = torch.empty_like(flat_a)
    baseline = timed(lambda: torch.lerp(flat_a, flat_b, 0.3, out=flat_out), repeats, device)
    encoders = {}
    for seed, name in [(0, "speech"), (1, "music")]:
        torch.manual_seed(seed)
        encoders[name] = Encoder(HubertModel(config).eval().to(device), 16000, False, name, f"random seed {seed}")
    pooled = weights_of(HubertModel(config).eval().to(device))
    kept = KeptWeights()
    spec = hubert_spec(config)
    perms = {k: v.to(device) for k, v in random_permutations(spec, COMPONENTS, torch.Generator().manual_seed(0)).items()}

    def inputs():
        return kept.on(device, "speech", encoders["speech"]), kept.on(device, "music", encoders["music"])

    def permute_pooled():
        reordered = kept.reordered(device, "music", encoders["music"], ("bench",), FixedAlignment(spec, perms))
        permute_into(pooled, *inputs(), alignment=Reordered(reordered), alpha=0.3, inputs_finite=True)

    t_linear = timed(lambda: linear_into(pooled, *inputs(), alpha=0.3, inputs_finite=True), repeats, device)
    t_permute = timed(permute_pooled, repeats, device)  # the warm-up run re-orders; the timed ones reuse it
    print(f"baseline torch.lerp, flat preallocated buffers (same run): {baseline * 1e3:8.1f} ms")
    print(f"linear into the pooled model:                   {t_linear * 1e3:8.1f} ms  ratio {t_linear / baseline:.2f}x")
    print(f"repeated permute into the pooled model:         {t_permute * 1e3:8.1f} ms  ratio {t_permute / baseline:.2f}x")


def bench_invariance(device: str) -> None:
    config = base_config()
    torch.manual_seed(0)
    model = HubertModel(config).eval().to(device)
    spec = hubert_spec(config)
    perms = random_permutations(spec, COMPONENTS, torch.Generator().manual_seed(1))
    permuted = HubertModel(config).eval().to(device)
    permuted.load_state_dict(apply_permutations(model.state_dict(), spec, perms))
    audio = torch.randn(2, 16000, generator=torch.Generator().manual_seed(2)).to(device)
    with torch.no_grad():
        before = model(audio, output_hidden_states=True).hidden_states
        after = permuted(audio, output_hidden_states=True).hidden_states
    res = perms["res"].to(device)
    worst = max((a[..., res] - b).abs().max().item() for a, b in zip(before, after))
    sorted_worst = max((a.sort(-1).values - b.sort(-1).values).abs().max().item() for a, b in zip(before, after))
    verdict = "OK" if max(worst, sorted_worst) <= 1e-4 else "FAILED"
    print(f"HuBERT-base invariance under random permutations of {', '.join(COMPONENTS)}: "
          f"max |diff| {worst:.2e} (sorted channels {sorted_worst:.2e}) -> {verdict}")


def standin_encoders(device: str, music: str) -> list:
    """The speech and music stand-ins, written into runs/standins/ first if they are not there."""
    from scripts.make_standins import DEFAULT_OUT, write_standin

    encoders = []
    for seed, name in enumerate(("hubert-base-ls960", music)):
        folder = DEFAULT_OUT / name
        if not (folder / "pytorch_model.bin").is_file():
            write_standin(name, DEFAULT_OUT, seed=seed)
        encoders.append(load_encoder(folder, device=device))
    return encoders


class Clock:
    """Wall seconds and this process's CPU seconds (all threads) since it was made: on a shared machine
    the CPU seconds still count the work done, where wall seconds also count the waits for a core."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.wall, self.cpu = self._now()

    def _now(self) -> tuple[float, float]:
        if self.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter(), time.process_time()

    def read(self) -> tuple[float, float]:
        wall, cpu = self._now()
        return wall - self.wall, cpu - self.cpu


def forward_passes(encoders, batches, device: str) -> tuple[float, float]:
    """(wall, CPU) seconds for the plain forward passes of every encoder over every batch."""
    clock = Clock(device)
    with torch.no_grad():
        for batch in batches:
            for encoder in encoders:
                encoder.model(encoder_input(encoder, batch, 16000))
    return clock.read()


def bench_alignment(device: str, n_clips: int, batch_size: int, music: str) -> None:
    encoders = standin_encoders(device, music)
    clips, source = builtin_calibration(limit=n_clips)
    batches = list(equal_length_batches(clips, batch_size))
    before = forward_passes(encoders, batches, device)
    clock, passes_done = Clock(device), []

    def progress(fraction: float, message: str) -> None:
        if message.startswith(f"calibration clips {len(clips)}/{len(clips)}"):
            passes_done.append(clock.read())  # activations + correlation: the last clip's statistics are in

    alignment = correlation_align(*encoders, clips, 16000, components=PAPER_COMPONENTS, batch_size=batch_size,
                                  progress=progress)
    total = clock.read()
    after = forward_passes(encoders, batches, device)
    print(f"alignment of the {encoders[0].name} and {encoders[1].name} stand-ins on {len(clips)} {source} "
          f"({', '.join(PAPER_COMPONENTS)}; batches of {batch_size}; {assignment_workers()} assignment threads)")
    print("  stages (wall): " + ", ".join(f"{k} {v:.1f}s" for k, v in alignment.timings.items()))
    for i, kind in enumerate(("wall", "CPU")):
        baseline, passes = (before[i] + after[i]) / 2, passes_done[0][i]
        print(f"  {kind:>4}: forward passes of both encoders {before[i]:.1f}s before, {after[i]:.1f}s after, "
              f"baseline {baseline:.1f}s; activations + correlation {passes:.1f}s = {passes / baseline:.2f}x "
              f"(target <= 1.5x); whole alignment {total[i]:.1f}s = {total[i] / baseline:.2f}x (target <= 2x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--calib-clips", type=int, default=96)
    parser.add_argument("--batch", type=int, default=16, help="calibration clips per batch")
    parser.add_argument("--music", default="MERT-v0-public", help="music stand-in: MERT-v0-public (16 kHz) or MERT-v1-95M (24 kHz)")
    parser.add_argument("--skip-align", action="store_true")
    parser.add_argument("--skip-merge", action="store_true", help="only the alignment")
    parser.add_argument("--threads", type=int, help="torch CPU threads (1 keeps ratios steady on a shared machine)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else ""))
    if not args.skip_merge:
        bench_merge(args.device, args.repeats)
        bench_pooled_merge(args.device, args.repeats)
        bench_invariance(args.device)
    if not args.skip_align:
        bench_alignment(args.device, args.calib_clips, args.batch, args.music)


if __name__ == "__main__":
    main()
