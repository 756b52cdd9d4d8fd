"""python -m merging.synth build-assets [--out assets/audio] [--workers N]"""
import argparse

from .assets import ASSETS_DIR, build_assets

parser = argparse.ArgumentParser(prog="python -m merging.synth", description=__doc__)
commands = parser.add_subparsers(dest="command", required=True)
build = commands.add_parser("build-assets", help="render the shipped calibration, probe and example clips")
build.add_argument("--out", default=str(ASSETS_DIR), help="output folder (default: assets/audio)")
build.add_argument("--workers", type=int, help="parallel renders (default: two per CPU core)")
args = parser.parse_args()
build_assets(args.out, args.workers)
