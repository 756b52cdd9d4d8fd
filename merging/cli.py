"""Command line: `python -m merging merge ...` and `python -m merging benchmark ...`."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from .methods import METHODS, MergeMethod, Param, all_params, get_method
from .state import MergeError
from .tradeoff import ALPHA_GRID, LAMBDA_GRID

# Input roles' flags: `pretrained` (speech_ft) is the speech encoder, the others are named after their role.
INPUT_FLAGS = {"pretrained": "speech"}
INPUT_HELP = {
    "speech": "speech encoder: local directory or hub id (the pretrained encoder for speech_ft)",
    "music": "music encoder: local directory or hub id",
    "base": "shared initialisation of the task-vector methods' models",
    "finetuned": "fine-tuned copy of --speech, for speech_ft",
}
KIND_TYPES = {"float": float, "int": int, "choice": str}


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _pairs(text: str) -> list[tuple[float, float]]:
    """'0.5:0.5,1:0' -> [(0.5, 0.5), (1.0, 0.0)]."""
    pairs = []
    for item in (x for x in text.split(",") if x.strip()):
        values = item.split(":")
        if len(values) != 2:
            raise argparse.ArgumentTypeError(f"'{item}' is not a SPEECH:MUSIC pair")
        pairs.append((float(values[0]), float(values[1])))
    return pairs


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _param_help(uses: list[tuple[str, Param]]) -> str:
    """'meaning: values [methods]; ...', one meaning per distinct help text."""
    by_help: dict[str, dict[str, list[str]]] = {}
    for method, param in uses:
        by_help.setdefault(param.help, {}).setdefault(param.values(), []).append(method)
    return "; ".join(f"{help_}: " + "; ".join(f"{values} [{', '.join(methods)}]" for values, methods in ranges.items())
                     for help_, ranges in by_help.items()).replace("%", "%%")


def merge_parser(sub) -> None:
    p = sub.add_parser("merge", help="merge a speech and a music encoder and save the result")
    p.add_argument("--method", required=True, choices=list(METHODS),
                   help="; ".join(f"{m.name}: {m.description}" for m in METHODS.values()).replace("%", "%%"))
    p.add_argument("--out", required=True, help="output directory (transformers format + merge_config.json)")
    roles = dict.fromkeys(INPUT_FLAGS.get(role, role) for m in METHODS.values() for role in m.inputs)
    for role in roles:
        p.add_argument(_flag(role), help=INPUT_HELP.get(role, f"{role} input: local directory or hub id"))
    for name, uses in all_params().items():
        kind = uses[0][1].kind
        choices = sorted({c for _, param in uses for c in param.choices}) or None
        kind_type = {"floats": _floats, "pairs": _pairs}.get(kind, KIND_TYPES.get(kind))
        metavar = {"floats": "X,X,...", "pairs": "S:M,S:M,..."}.get(kind)
        p.add_argument(_flag(name), type=kind_type, choices=choices, metavar=metavar, help=_param_help(uses))
    p.add_argument("--align", choices=("correlation", "weights"), default="correlation",
                   help="how an alignment is computed (permute; --align-to-base), default correlation")
    p.add_argument("--align-to-base", action="store_true", help="task-vector methods: align both models to --base first")
    p.add_argument("--components", default="cnn,ffn,attn", help="groups to permute: any of cnn,res,ffn,attn (default: the paper's cnn,ffn,attn)")
    p.add_argument("--signed", action="store_true", help="match on signed correlation (default: absolute, as the paper)")
    p.add_argument("--calib-dir", help="folder of calibration audio (default: the built-in calibration clips)")
    p.add_argument("--calib-limit", type=int, help="use at most this many calibration clips")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--allow-rate-mismatch", action="store_true",
                   help="merge inputs that take audio at different sample rates (refused otherwise: each CNN front end is "
                        "tied to its rate; the result keeps the first input's); recorded in merge_config.json")


def _method_params(args, method: MergeMethod) -> dict:
    """The parameters given on the command line; MergeError for one the method does not take."""
    params = {name: getattr(args, name) for name in all_params() if getattr(args, name) is not None}
    unknown = sorted(set(params) - set(method.parameters))
    if unknown:
        raise MergeError(f"method '{method.name}' takes no {', '.join(_flag(name) for name in unknown)}")
    return params


def run_merge(args) -> str:
    from .calibration import builtin_calibration, load_calibration_dir
    from .checkpoint import save_encoder
    from .encoders import load_encoder
    from .pipeline import align, check_sample_rates, merge_encoders, merge_record

    started = time.perf_counter()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    method = get_method(args.method)
    roles = method.inputs
    sources = {role: getattr(args, INPUT_FLAGS.get(role, role)) for role in roles}
    for role in roles:
        if not sources[role]:
            raise MergeError(f"method '{method.name}' needs {_flag(INPUT_FLAGS.get(role, role))}")
    params = _method_params(args, method)
    encoders = {role: load_encoder(sources[role], device=device) for role in roles}
    rate_warning = check_sample_rates(encoders, args.allow_rate_mismatch)  # before any alignment is paid for

    alignments = {}
    pairs = [(method.aligns, roles[0])] if method.aligns else []
    if args.align_to_base and method.task_vector:
        pairs = [(role, "base") for role in roles if role != "base"]
    if pairs:
        clips, calib_source = None, "weights only"
        if args.align == "correlation":
            if args.calib_dir:
                clips, calib_source = load_calibration_dir(args.calib_dir, limit=args.calib_limit), args.calib_dir
            else:
                clips, calib_source = builtin_calibration(limit=args.calib_limit)
        components = [c.strip() for c in args.components.split(",") if c.strip()]
        for moving, target in pairs:
            with tqdm(total=100, desc=f"aligning {moving} to {target}", unit="%", leave=False) as bar:
                def progress(fraction, message, bar=bar):  # the message carries the clips' time estimate
                    bar.set_postfix_str(message, refresh=False)
                    bar.update(round(fraction * 100) - bar.n)
                alignments[moving] = align(encoders[target], encoders[moving], how=args.align, clips=clips,
                                           components=components, absolute=not args.signed, progress=progress)
        params_note = f"{len(clips) if clips else 0} clips from {calib_source}" if clips else calib_source
    merged = merge_encoders(method.name, encoders, alignments=alignments, allow_rate_mismatch=args.allow_rate_mismatch,
                            **params)
    record = merge_record(method.name, encoders, params, alignments, allow_rate_mismatch=args.allow_rate_mismatch)
    first = encoders[roles[0]]
    out = save_encoder(args.out, merged, first.config, sample_rate=first.sample_rate, normalize=first.normalize, merge_config=record)
    seconds = time.perf_counter() - started
    summary = f"merged {method.name} {_describe(params)} of {', '.join(f'{r}={sources[r]}' for r in roles)} -> {out} in {seconds:.1f}s on {device}"
    if alignments:
        groups = [g for a in alignments.values() for g in a.groups.values()]
        before = sum(g.before for g in groups) / max(len(groups), 1)
        after = sum(g.after for g in groups) / max(len(groups), 1)
        summary += f"; {len(groups)} groups aligned ({params_note}), mean matched correlation {before:.3f} -> {after:.3f}"
    return summary + (f"\nwarning: {rate_warning}" if rate_warning else "")


def _lambdas(text: str) -> tuple[float, float]:
    values = _floats(text)
    if len(values) != 2 or not all(0 <= v <= 2 for v in values):
        raise argparse.ArgumentTypeError("give two weights in [0, 2], e.g. 0.5,0.5")
    return values[0], values[1]


def benchmark_parser(sub) -> None:
    p = sub.add_parser("benchmark", help="probe scores of the encoders and of every merge method, as a Markdown table")
    p.add_argument("--models", nargs="+", default=None, help="folders holding the named built-in models, or ROLE=PATH pairs")
    p.add_argument("--alphas", type=_floats, default=list(ALPHA_GRID),
                   help=f"alphas for linear and permute (default {','.join(f'{a:g}' for a in ALPHA_GRID)})")
    p.add_argument("--components", default="cnn,ffn,attn", help="groups permute aligns (default cnn,ffn,attn)")
    p.add_argument("--lambdas", type=_lambdas, default=None,
                   help="λ_speech,λ_music for every task-vector method (default: each method's pair chosen from "
                        + " ".join(f"{s:g},{m:g}" for s, m in LAMBDA_GRID)
                        + " on a validation split of the probes' training clips)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the numbers as JSON to this file")
    p.add_argument("--sweep", help="write the linear/permute trade-off curve as JSON here (and a plotly .html beside it)")


def run_benchmark(args) -> str:
    import platform

    from .benchmark import benchmark_rows, find_models, markdown_table, write_json
    from .catalogue import MODELS_DIR
    from .calibration import builtin_calibration
    from .probes import builtin_suite

    started = time.perf_counter()
    suite = builtin_suite()
    models = find_models(args.models or [MODELS_DIR])
    if not models:
        raise MergeError(f"no models found in {args.models or [str(MODELS_DIR)]}")
    clips, _ = builtin_calibration()
    components = [c.strip() for c in args.components.split(",") if c.strip()]
    rows = benchmark_rows(suite, models, alphas=args.alphas, calibration=clips, components=components, seed=args.seed,
                          lambdas=args.lambdas,
                          log=lambda line: print(line, file=sys.stderr))
    if args.json:
        write_json(rows, args.json, seed=args.seed)
    if args.sweep:
        write_sweep(rows, args.sweep)
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    counts = ", ".join(f"{task} {n}" for task, n in rows[0].scores.test_clips.items())
    return (markdown_table(rows, seed=args.seed) + f"\n\n{len(rows)} rows in {time.perf_counter() - started:.0f}s on {machine}, "
            f"seed {args.seed}; [low, high]: 95 % bootstrap intervals over the test clips ({counts})")


def write_sweep(rows, path: str | Path) -> tuple[Path, Path]:
    """The linear/permute trade-off over α of benchmark rows, as JSON and a plotly HTML page beside it."""
    from viz.figures import tradeoff_curve

    from .benchmark import sweep_curves

    curves = sweep_curves(rows)
    json_path = Path(path)
    json_path.write_text(json.dumps(curves, indent=2))
    html_path = json_path.with_suffix(".html")
    tradeoff_curve(curves).write_html(html_path, include_plotlyjs=True)
    return json_path, html_path


def _describe(params: dict) -> str:
    return "(" + ", ".join(f"{k}={v}" for k, v in params.items()) + ")" if params else "(defaults)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m merging", description="merge lab: merge speech and music encoders")
    sub = parser.add_subparsers(dest="command", required=True)
    merge_parser(sub)
    benchmark_parser(sub)
    args = parser.parse_args(argv)
    try:
        print(run_merge(args) if args.command == "merge" else run_benchmark(args))
    except MergeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
