"""`itstudy` command line: parses arguments and calls one function per command.

    itstudy run      experiments/demo.yaml [KEY=VALUE ...]   a whole study: trials x baselines, in MLflow
    itstudy sync     experiments/demo.yaml [KEY=VALUE ...]   send MLflow the metrics an outage kept from it
    itstudy train    experiments/train_tiny.yaml [KEY=VALUE ...]   one training run on Ray Train
    itstudy baseline random majority --experiment FILE [--seeds 1 2 3] [--set KEY=VALUE ...]
    itstudy bench    train --shape scratch/t5-small ...
    itstudy report   experiments/demo.yaml | STUDY_NAME
    itstudy ui       experiments/demo.yaml | STUDY_NAME

Each command loads its study before importing what it runs (Ray, MLflow, torch), so that
`itstudy --help` and config errors are instant and a bad spec is refused before anything starts.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import get_args

from itstudy.config import ModelFreeBaselineName, load_study
from itstudy.console import quiet
from itstudy.errors import UserError
from itstudy.paths import VERBOSE_ENV
from itstudy.sweep.address import check_ray_address


def cmd_run(args: argparse.Namespace) -> int:
    study = load_study(args.experiment, args.overrides)
    check_ray_address()  # in seconds, before Ray is imported
    from itstudy.tracking import check_server, check_writable, resolve_tracking_uri

    uri = resolve_tracking_uri(study.tracking)
    check_server(uri)  # likewise: a dead tracking server or a read-only store in seconds
    check_writable(uri)
    from itstudy.sweep import run_sweep

    result = run_sweep(study, experiment_file=Path(args.experiment))
    return 1 if result.failed else 0


def cmd_sync(args: argparse.Namespace) -> int:
    study = load_study(args.experiment, args.overrides)
    from itstudy.tracking import check_tracking, experiment_id_of, experiment_name, find_runs, resolve_tracking_uri

    uri = resolve_tracking_uri(study.tracking)
    check_tracking(uri)  # in seconds, before the driver's modules (Ray, torch) are imported
    from itstudy.sweep.driver import send_records
    from itstudy.sweep.trials import sweep_name

    experiment_id = experiment_id_of(uri, experiment_name(study))
    identity = {"itstudy.kind": "sweep", "itstudy.sweep": sweep_name(study)}
    parents = find_runs(uri, experiment_id, identity) if experiment_id else []
    if not parents:
        print(f"itstudy: no sweep {sweep_name(study)} in {uri}: nothing to sync (same overrides as the run?)", file=sys.stderr)
        return 2
    unsent = send_records(study, uri, parents[0].info.run_id, Path(args.experiment))
    if not unsent:
        print(f"every recorded metric of {study.name} is in MLflow ({uri})")
    return 1 if unsent else 0


def cmd_train(args: argparse.Namespace) -> None:
    study = load_study(args.experiment, args.overrides)
    check_ray_address()
    from itstudy.training.runner import train_command

    train_command(study)


def cmd_baseline(args: argparse.Namespace) -> None:
    study = load_study(args.experiment, args.overrides)
    from itstudy.baseline_run import baseline_command

    baseline_command(study, names=args.names, seeds=args.seeds)


def cmd_bench(args: argparse.Namespace) -> None:
    from itstudy.training.bench_args import parse_bench_args

    bench_args = parse_bench_args(args.bench_args)  # --help and bad arguments answer before torch is imported
    from itstudy.training.bench import run_bench

    run_bench(bench_args)


def cmd_report(args: argparse.Namespace) -> None:
    from dashboards.report import build_report

    print(build_report(args.study, tracking_uri=args.tracking_uri, out_dir=args.out))


def cmd_ui(args: argparse.Namespace) -> None:
    from itstudy.ui import ui_command

    ui_command(args.study, port=args.port, host=args.host)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="itstudy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--verbose", action="store_true", help="show everything Ray, Tune and MLflow print")
    commands = parser.add_subparsers(dest="command", required=True)

    overrides_help = "config overrides, e.g. train.learning_rate=1e-4 data.instances_per_task=10"

    run = commands.add_parser("run", help="run a whole study (sweep + baselines); rerun to resume")
    run.add_argument("experiment", help="experiment YAML file")
    run.add_argument("overrides", nargs="*", help=overrides_help)
    run.set_defaults(func=cmd_run)

    sync = commands.add_parser("sync", help="send MLflow the metrics a study recorded but could not send (an outage)")
    sync.add_argument("experiment", help="experiment YAML file")
    sync.add_argument("overrides", nargs="*", help=overrides_help)
    sync.set_defaults(func=cmd_sync)

    train = commands.add_parser("train", help="run one training run on Ray Train")
    train.add_argument("experiment", help="experiment YAML file")
    train.add_argument("overrides", nargs="*", help=overrides_help)
    train.set_defaults(func=cmd_train)

    baseline = commands.add_parser("baseline", help="run model-free baselines on the test tasks")
    baseline.add_argument("names", nargs="+", choices=get_args(ModelFreeBaselineName))
    baseline.add_argument("--experiment", "-e", help="experiment YAML file (default: built-in defaults)")
    baseline.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="seeds (default: 1 2 3)")
    baseline.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE", help=overrides_help)
    baseline.set_defaults(func=cmd_baseline)

    bench = commands.add_parser("bench", help="benchmarks (itstudy bench train --help)", add_help=False)
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    bench.set_defaults(func=cmd_bench)

    report = commands.add_parser("report", help="build the HTML report of a study from MLflow")
    report.add_argument("study", help="experiment YAML file or study (MLflow experiment) name")
    report.add_argument("--tracking-uri", default=None, help="default: the study's, else $MLFLOW_TRACKING_URI")
    report.add_argument("--out", type=Path, default=None, help="output folder")
    report.set_defaults(func=cmd_report)

    ui = commands.add_parser("ui", help="start the MLflow UI on the study's store (loopback)")
    ui.add_argument("study", nargs="?", default=None, help="experiment YAML file or study name")
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--host", default="127.0.0.1")
    ui.set_defaults(func=cmd_ui)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.verbose:
        os.environ[VERBOSE_ENV] = "1"
    quiet()  # before any command imports Ray, Tune or MLflow
    try:
        return args.func(args) or 0
    except UserError as error:
        print(f"itstudy: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
