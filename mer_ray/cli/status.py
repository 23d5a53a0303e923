"""`mer-ray status`: what a run holds, what is training and what resuming would train."""

from __future__ import annotations

import json


def add_status_parser(commands) -> None:
    p = commands.add_parser(
        "status", help="what a run holds, what is training and what resuming would train",
        description="Read a run folder (local or URI; no Ray needed): per config the members "
        "saved of those expected (run.json's configs and seeds), failed ones, best epochs "
        "and held-out scores; packs in flight (their progress files) with an ETA; packs "
        "that stopped; and, when nothing is training, exactly the members the same command "
        "would train to resume.")
    p.add_argument("run", metavar="RUN", help="run folder or URI")
    p.add_argument("--members", action="store_true", help="one line per saved member")
    p.add_argument("--json", action="store_true", help="the same as JSON")
    p.set_defaults(func=cmd_status)


def cmd_status(args):
    from mer_ray.runs.status import format_status, run_status

    status = run_status(args.run)
    if args.json:
        print(json.dumps(status, indent=1))
    else:
        print(format_status(status, members=args.members))
