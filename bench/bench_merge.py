"""Merge speed and alignment cost at HuBERT-base size (random weights), with same-run baselines.

    python bench/bench_merge.py [--device cpu|cuda] [--repeats 5] [--calib-clips 32] [--skip-align] [--threads N]

Prints, for `linear` (into new tensors, and `linear_into` preallocated ones) and for `permute` (apply the alignment's permutations, then `linear`;
and again as a slider does, re-merging with one `Alignment`, which keeps its re-ordered music weights on a CPU), the
median time and its ratio to `torch.lerp` over preallocated flat buffers of the same size; then the
HuBERT-base invariance check (random permutations leave hidden states unchanged up to the residual
order) and the seconds per stage of a full correlation alignment of two random base-size encoders.
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
from merging.align import Alignment, GroupAlignment, correlation_align  # noqa: E402
from merging.calibration import synthetic_signals  # noqa: E402
from merging.encoders import Encoder  # noqa: E402
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

    class FixedAlignment:  # the alignment's apply step, without solving one
        def apply(self, state):
            return apply_permutations(state, spec, perms)

    t_apply = timed(lambda: apply_permutations(music, spec, perms), repeats, device)
    t_permute = timed(lambda: merge("permute", {"speech": speech, "music": music}, alignment=FixedAlignment(), alpha=0.3), repeats, device)
    print(f"apply permutations only (all components):       {t_apply * 1e3:8.1f} ms  ratio {t_apply / baseline:.2f}x")
    print(f"permute (apply permutations + linear):          {t_permute * 1e3:8.1f} ms  ratio {t_permute / baseline:.2f}x")
    alignment = Alignment(spec, "weights", tuple(COMPONENTS), True,
                          {name: GroupAlignment(name, "", None, perm, torch.empty(0), 0.0, 0.0) for name, perm in perms.items()})
    t_slider = timed(lambda: merge("permute", {"speech": speech, "music": music}, alignment=alignment, alpha=0.3), repeats, device)
    print(f"permute again with one Alignment (kept re-order): {t_slider * 1e3:6.1f} ms  ratio {t_slider / baseline:.2f}x"
          + ("" if device == "cpu" else "  (kept on CPU only)"))


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


def bench_alignment(device: str, clips: int) -> None:
    config = base_config()
    encoders = []
    for seed, name in [(0, "speech"), (1, "music")]:
        torch.manual_seed(seed)
        encoders.append(Encoder(model=HubertModel(config).eval().to(device), sample_rate=16000, normalize=False, name=name, source=f"random seed {seed}"))
    calibration = synthetic_signals(clips, seconds=1.0)
    start = time.perf_counter()
    alignment = correlation_align(*encoders, calibration, 16000, components=COMPONENTS, batch_size=8)
    total = time.perf_counter() - start
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in alignment.timings.items())
    print(f"alignment of two random base-size encoders on {clips} x 1 s clips (cnn, res, ffn, attn): {total:.1f}s total ({stages})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--calib-clips", type=int, default=32)
    parser.add_argument("--skip-align", action="store_true")
    parser.add_argument("--threads", type=int, help="torch CPU threads (1 keeps ratios steady on a shared machine)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else ""))
    bench_merge(args.device, args.repeats)
    bench_invariance(args.device)
    if not args.skip_align:
        bench_alignment(args.device, args.calib_clips)


if __name__ == "__main__":
    main()
