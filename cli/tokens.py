"""`caddie token create|list|revoke`: API tokens, made and revoked by an operator.

A new token is printed once and never again: the database keeps only its sha256.
"""

import argparse

from sqlmodel import Session

from server import auth
from server.db import get_engine
from server.errors import NotFound


def cmd_create(args: argparse.Namespace) -> int:
    with Session(get_engine()) as session:
        row, token = auth.create_token(session, name=args.name, role=auth.Role(args.role))
        print(f"token {row.id} for {row.name} ({row.role}); shown once, keep it secret:\n{token}")
    return 0


def cmd_list(_args: argparse.Namespace) -> int:
    with Session(get_engine()) as session:
        rows = auth.list_tokens(session)
    for row in rows:
        state = f"revoked {row.revoked_at:%Y-%m-%d %H:%M}" if row.revoked_at else "active"
        print(f"{row.id:>4}  {row.name:<20} {row.role:<7} created {row.created_at:%Y-%m-%d %H:%M}  {state}")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    with Session(get_engine()) as session:
        try:
            row = auth.revoke_token(session, args.id)
        except NotFound as exc:
            print(f"caddie: {exc.message}")
            return 2
        print(f"token {row.id} ({row.name}) is revoked")
    return 0


# Quoted: argparse's _SubParsersAction is generic to type checkers only, not at run time.
def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    token = subparsers.add_parser("token", help="create, list and revoke API tokens")
    commands = token.add_subparsers(dest="token_command", required=True)
    create = commands.add_parser("create", help="make a token and print it once")
    create.add_argument("name", help="the user it stands for (owner of what it submits)")
    create.add_argument("--role", choices=[r.value for r in auth.Role], default=auth.Role.member.value)
    create.set_defaults(func=cmd_create)
    commands.add_parser("list", help="every token: id, user, role, state").set_defaults(func=cmd_list)
    revoke = commands.add_parser("revoke", help="stop a token from working")
    revoke.add_argument("id", type=int)
    revoke.set_defaults(func=cmd_revoke)
