"""python -m merging.train {all,data,speech,music,student_base,student_speech,student_music,student_multi,speech_ft,cards}
[--out assets/models] [--device auto]"""
import argparse
import time
from pathlib import Path

from . import MODELS_DIR, RECIPES, TRAINING_SETS, device_of, render_training_set, train
from .cards import write_cards

parser = argparse.ArgumentParser(prog="python -m merging.train", description="rebuild the built-in encoders")
parser.add_argument("what", choices=("all", "data", *RECIPES, "cards"),
                    help="all: data, every model in order, then the cards; data: render the training audio; cards: probe and write README.md")
parser.add_argument("--out", type=Path, default=MODELS_DIR, help="models folder (default: assets/models)")
parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
parser.add_argument("--no-cards", action="store_true", help="with all: skip the probe scores and cards")
args = parser.parse_args()

started = time.perf_counter()
device = device_of(args.device)
if args.what in ("all", "data"):
    for name in TRAINING_SETS:
        render_training_set(name)
keys = list(RECIPES) if args.what == "all" else [args.what] if args.what in RECIPES else []
for key in keys:
    print(f"{RECIPES[key].name}: {train(key, args.out, device)}")
if args.what == "cards" or (args.what == "all" and not args.no_cards):
    for name, row in write_cards(args.out).items():
        print(f"{name:<24} speech {row['speech_avg']:5.1f}  music {row['music_avg']:5.1f}  avg {row['avg']:5.1f}")
print(f"done in {time.perf_counter() - started:.0f}s on {device}")
