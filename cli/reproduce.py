"""`caddie reproduce KEY|ID|PATH`: the plan of a re-run, then (with --yes) the re-run itself;
`caddie reproduce evidence ID DIR`: a re-run's evidence folder for a reviewer."""

import argparse
import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlmodel import Session

from server import experiments, records, reproduce, rerun
from server.db import get_engine
from server.errors import NotFound
from server.reproduce import GitSource, Overrides, Plan, SourceError

BAD_INPUT = 2


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "reproduce", help="re-run an imported record (its key or id), a records folder (a path) or a "
                          "git repository at a commit (URL --commit C --path FOLDER)")
    parser.add_argument("target", help="an imported record's key (<track>/<folder>) or id, a records "
                                       "folder, or 'evidence' to write a re-run's evidence")
    parser.add_argument("--commit", default="", help="with a git URL as target: the commit to re-run")
    parser.add_argument("--path", default="", help="with a git URL as target: the records folder in it")
    parser.add_argument("rest", nargs="*", help="for evidence: the re-run's id and the folder to write")
    parser.add_argument("--provider", choices=["runpod", "ssh", "local"], default="runpod")
    parser.add_argument("--seeds", default="", help="comma-separated seeds (default: the submission's)")
    parser.add_argument("--fresh-seeds", type=int, default=None, help="N new seeds instead")
    parser.add_argument("--budget-usd", type=float, default=None, help="the re-run's budget cap")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=value",
                        help="change one env value of the plan (repeatable)")
    parser.add_argument("--yes", action="store_true", help="create the re-run (else: the plan only)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.set_defaults(func=cmd_reproduce)


def cmd_reproduce(args: argparse.Namespace) -> int:
    if args.target == "evidence":
        return cmd_evidence(args.rest)
    with Session(get_engine()) as session:
        try:
            plan = _plan(session, args.target, args)
            overrides = _overrides(args, plan)
            plan = reproduce.apply(plan, overrides)
        except (SourceError, NotFound, ValidationError, ValueError) as error:
            print(f"caddie reproduce: {error}")
            return BAD_INPUT
        public = plan.public(overrides.provider, overrides.budget_usd)
        print(json.dumps(public, indent=2) if args.json else describe(public))
        if not args.yes:
            print("\nNothing created: add --yes to create the re-run.")
            return 0
        created = reproduce.create_rerun(session, plan, overrides, owner="cli")
        print(f"\ncreated re-run experiment {created.id}")
    return 0


def _plan(session: Session, target: str, args: argparse.Namespace) -> Plan:
    if "://" in target or target.endswith(".git"):
        source = GitSource(url=target, commit=args.commit, path=args.path)
        with reproduce.git_source(source, allow_file=True) as found:  # the operator's own machine
            return reproduce.plan_folder(found, {"kind": "git", **source.model_dump()})
    folder = Path(target)
    if folder.is_dir():
        with reproduce.path_source(target) as found:
            return reproduce.plan_folder(found, {"kind": "path", "path": str(found.resolve())})
    if target.isdigit():
        return reproduce.plan_record(session, int(target))
    keys = records.imported_keys(session)
    if target not in keys:
        raise SourceError(f"target: {target!r} is no imported record's key, id or folder")
    return reproduce.plan_record(session, keys[target])


def _overrides(args: argparse.Namespace, plan: Plan) -> Overrides:
    env = dict(plan.env)
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: NAME=value")
        env[name] = value
    seeds = [int(s) for s in args.seeds.replace(",", " ").split()] or None
    return Overrides(env=env, seeds=seeds, fresh_seeds=args.fresh_seeds, provider=args.provider,
                     budget_usd=args.budget_usd)


def describe(plan: dict[str, Any]) -> str:
    lines = [plan["name"], "", f"launches: torchrun --standalone --nproc_per_node="
             f"{plan['hardware']['gpu_count']} {plan['entrypoint']}", "", "files (byte for byte):"]
    lines += [f"  {f['name']:<32} {f['nbytes']:>10,} bytes  sha256 {f['sha256']}"
              f"{'  counted' if f['counted'] else ''}{'' if f['text'] else '  binary'}" for f in plan["files"]]
    lines += ["", f"env (from {plan['env_from']}):"] + [f"  {k}={v}" for k, v in plan["env"].items()]
    lines += [f"  seed {seed}: " + " ".join(f"{k}={v}" for k, v in env.items())
              for seed, env in plan["seed_env"].items() if env]
    data, est = plan["data"], plan["estimate"]
    lines += ["", f"data: tokenizer {data['tokenizer']} (from {data['tokenizer_from']}), "
              f"dataset fineweb10B_{data['dataset']}",
              f"seeds: {', '.join(str(s) for s in plan['seeds'])}",
              f"hardware: {plan['hardware']['gpu_count']} x {plan['hardware']['gpu_type']}",
              f"estimate on {est['provider']}: {est['runs']} runs, ${est['total_usd']:,.2f} ({est['price_source']})",
              f"budget cap: {'none' if plan['budget_usd'] is None else plan['budget_usd']}"]
    lines += [f"note: {note}" for note in plan["notes"]]
    return "\n".join(lines)


def cmd_evidence(rest: list[str]) -> int:
    if len(rest) != 2 or not rest[0].isdigit():
        print("usage: caddie reproduce evidence RERUN_ID DIR")
        return BAD_INPUT
    target = Path(rest[1])
    if target.exists() and any(target.iterdir()):
        print(f"caddie reproduce: {target} is not empty")
        return BAD_INPUT
    with Session(get_engine()) as session:
        try:
            experiment = experiments.get_experiment(session, int(rest[0]))
        except NotFound as error:
            print(f"caddie reproduce: {error}")
            return BAD_INPUT
        if not rerun.is_rerun(experiment):
            print(f"caddie reproduce: experiment {rest[0]} is not a re-run")
            return BAD_INPUT
        files = rerun.evidence_files(session, experiment)
    target.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (target / name).write_bytes(data)
    print(f"wrote {len(files)} files to {target}")
    return 0
