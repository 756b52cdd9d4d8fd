"""Command line: `python -m merging merge ...`, `python -m merging benchmark ...` and `python -m merging tune ...`."""
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


def tune_parser(sub) -> None:
    from .tune import PER_CLASS, SAMPLERS, tunable_methods

    p = sub.add_parser("tune", help="search per-layer merge weights for the speech/music front (validation split), "
                                    "then check the front on the test split beside single-weight merges")
    p.add_argument("--method", required=True, choices=tunable_methods(),
                   help="linear, permute: α per layer; task_arithmetic: a λ pair per layer; ties, dare, drm: one λ pair")
    p.add_argument("--speech", required=True, help="speech encoder (for task-vector methods: the speech student)")
    p.add_argument("--music", required=True, help="music encoder (for task-vector methods: the music student)")
    p.add_argument("--base", help="the students' shared base (task-vector methods)")
    p.add_argument("--budget", type=int, required=True, help="evaluations for the whole study (every worker and resumed run)")
    p.add_argument("--seconds", type=float, help="no evaluation starts after this many seconds of this run")
    p.add_argument("--out", required=True, help="output folder: front.json, the study (study.db) and, with --balance, merged/")
    p.add_argument("--balance", type=float, help="the weight on speech (0 to 1): save the front point with the best "
                                                 "balanced validation score as DIR/merged with its merge_config.json")
    p.add_argument("--sampler", choices=SAMPLERS, default=SAMPLERS[0], help=f"Optuna sampler (default {SAMPLERS[0]})")
    p.add_argument("--seed", type=int, default=0, help="the sampler's seed (worker w uses seed + w)")
    p.add_argument("--per-class", type=int, default=PER_CLASS,
                   help=f"clips per class and split of the validation subset each candidate is scored on (default {PER_CLASS})")
    p.add_argument("--storage", help="Optuna storage URL (default sqlite:///OUT/study.db); workers that share it share the study")
    p.add_argument("--study", help="study name (default tune-METHOD)")
    p.add_argument("--worker", type=int, default=0,
                   help="this worker's number: 0 searches and then checks the front; others only search the shared study")
    p.add_argument("--front-limit", type=int, default=12, help="at most this many front points are checked (spread along it)")
    p.add_argument("--calib-limit", type=int, help="use at most this many built-in calibration clips for the alignment")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")


def run_tune(args) -> str:
    import threading

    from .calibration import builtin_calibration
    from .encoders import load_encoder
    from .pipeline import align, check_sample_rates
    from .probes import builtin_suite
    from .state import state_checksum
    from .tune import BALANCES, Budget, Merges, Probes, Search, averages, check, library, space, spread

    started = time.perf_counter()
    if args.balance is not None and not 0 <= args.balance <= 1:
        raise MergeError(f"--balance is the weight on speech, between 0 and 1, not {args.balance:g}")
    if args.front_limit < 2:
        raise MergeError("--front-limit: at least 2 (the front's two ends)")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    method = get_method(args.method)
    sources = {"speech": args.speech, "music": args.music, "base": args.base}
    if "base" in method.inputs and not args.base:
        raise MergeError(f"method '{method.name}' needs --base")
    budget = Budget(args.budget, args.seconds)
    encoders = {role: load_encoder(sources[role], device=device) for role in method.inputs}
    check_sample_rates(encoders)
    tuned = space(method.name, encoders["speech"].config.num_hidden_layers)
    alignments = {}
    if not tuned.lambdas:  # permute, and the permute merges a front is compared with
        clips, _ = builtin_calibration(limit=args.calib_limit)
        alignments["music"] = align(encoders["speech"], encoders["music"], clips=clips)
    merges, probes = Merges(encoders, alignments), Probes(builtin_suite(), per_class=args.per_class)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    storage = args.storage or f"sqlite:///{(out / 'study.db').resolve()}"
    identity = {"inputs": {role: state_checksum(e.state_dict()) for role, e in encoders.items()},
                "per_class": args.per_class}
    probes.inputs(*merges.ends())
    search = Search(tuned, lambda arguments: averages(probes.quick(merges.running(method.name, arguments))),
                    seed=args.seed, sampler_name=args.sampler, storage=storage, name=args.study or f"tune-{method.name}",
                    worker=args.worker, identity=identity)
    print(f"{'created' if search.created else 'resumed'} study; {probes.clips} validation clips per candidate",
          file=sys.stderr)
    result = search.run(budget, cancel=threading.Event(), progress=lambda p: print(p.line(), file=sys.stderr))
    searched = (f"{result.run} evaluations in {result.seconds:.0f} s, {result.proposing:.0f} s of it proposing "
                f"(study: {result.evaluations}/{budget.evaluations})")
    if args.worker:
        return f"worker {args.worker}: {searched}, stopped: {result.stopped}"
    if not result.front:
        return f"{searched}, stopped: {result.stopped}; no evaluation yet, so no front to check"
    balances = BALANCES + (() if args.balance is None else (args.balance,))
    report = check(spread(search.front(), args.front_limit), method.name, merges.scorer(probes), balances=balances,
                   log=lambda line: print(line, file=sys.stderr))
    record = {"library": library(), "sampler": args.sampler, "seed": args.seed,
              "budget": {"evaluations": budget.evaluations, "seconds": budget.seconds}, "per_class": args.per_class,
              "validation_clips_per_candidate": probes.clips, "evaluations": result.evaluations,
              "this_run": {"evaluations": result.run, "seconds": round(result.seconds, 1),
                           "proposing_seconds": round(result.proposing, 1), "stopped": result.stopped},
              "study": {"name": search.study.study_name, "storage": storage if args.storage else "study.db"},
              "threads": torch.get_num_threads(), "device": device}
    (out / "front.json").write_text(json.dumps({"method": method.name, "search": record, **report.as_dict()}, indent=2))
    lines = [report.table(), "", f"{searched}; {len(report.front)} front points checked; wall time "
             f"{time.perf_counter() - started:.0f} s on {device}, {torch.get_num_threads()} threads -> {out / 'front.json'}"]
    if args.balance is not None:
        lines.append(_save_tuned(report.chosen(args.balance), args.balance, merges, record, out / "merged"))
    return "\n".join(lines)


def _save_tuned(point, balance: float, merges, record: dict, folder: Path) -> str:
    """The chosen front point as a transformers folder whose merge_config.json records the search and the point."""
    from .checkpoint import save_encoder
    from .pipeline import merge_record

    method = get_method(point.method)
    encoders = {role: merges.encoders[role] for role in method.inputs}
    aligned = {method.aligns: merges.alignments[method.aligns]} if method.aligns else None
    config = merge_record(point.method, encoders, point.arguments, aligned)
    config["search"] = {**record, "balance": balance, "chosen": point.as_dict()}
    first = encoders[method.inputs[0]]
    saved = save_encoder(folder, merges.encoder(point.method, point.arguments).state_dict(), first.config,
                         sample_rate=first.sample_rate, normalize=first.normalize, merge_config=config)
    return f"balance {balance:g}: {point.label} saved to {saved}"


def _describe(params: dict) -> str:
    return "(" + ", ".join(f"{k}={v}" for k, v in params.items()) + ")" if params else "(defaults)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m merging", description="merge lab: merge speech and music encoders")
    sub = parser.add_subparsers(dest="command", required=True)
    merge_parser(sub)
    benchmark_parser(sub)
    tune_parser(sub)
    args = parser.parse_args(argv)
    try:
        print({"merge": run_merge, "benchmark": run_benchmark, "tune": run_tune}[args.command](args))
    except MergeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
