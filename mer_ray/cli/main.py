"""`mer-ray`: the parser of every command, and the one place errors become exit codes."""

from __future__ import annotations

import argparse
import os
import sys

from ensembles.cli import add_ensemble_parser, add_report_parser
from mer_ray.bench import add_parser as add_bench_parser
from mer_ray.cli.data import add_data_parser
from mer_ray.cli.demo import add_demo_parser
from mer_ray.cli.options import flag_names
from mer_ray.cli.predict import add_predict_parser
from mer_ray.cli.selftrain import add_selftrain_parser
from mer_ray.cli.status import add_status_parser
from mer_ray.cli.train import add_search_parser, add_train_parser, add_tune_parser
from mer_ray.errors import InputError, RunStopped, StorageError

# In the order `mer-ray --help` lists them: the pipeline from data to a submission.
COMMANDS = (add_data_parser, add_train_parser, add_tune_parser, add_search_parser,
            add_selftrain_parser, add_predict_parser, add_status_parser, add_ensemble_parser,
            add_report_parser, add_bench_parser, add_demo_parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mer-ray",
        description="Ray-distributed ensemble trainer for multimodal emotion recognition "
        "(MER2023, MER2024/2025 and datasets like them).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for add_command in COMMANDS:
        add_command(commands)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except InputError as e:  # named as the command line names it: --scale, not scale
        print(f"mer-ray: error: {e.named(flag_names(parser))}", file=sys.stderr)
        return e.exit_code
    except (StorageError, RunStopped) as e:
        print(f"mer-ray: error: {e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:
        # Output piped into e.g. `head` that closed early: not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("mer-ray: interrupted", file=sys.stderr)
        return 130
    return 0
