"""API tokens and who may do what.

Tokens are random strings shown once; the database keeps only their sha256, so a leaked
database grants nothing. Roles: `admin` (may act on anything) and `member` (may submit,
and cancel what it submitted). Every change needs a token; reading needs one only when
CADDIE_PUBLIC_READ is off.
"""

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlmodel import Session, col, select

from server.errors import Forbidden, NotFound, Unauthorized
from server.models import ApiToken, Experiment, Run, utcnow

TOKEN_PREFIX = "cad_"


class Role(StrEnum):
    admin = "admin"
    member = "member"


@dataclass(frozen=True)
class Principal:
    """Who a request acts for."""

    name: str
    role: Role
    token_id: int

    @property
    def is_admin(self) -> bool:
        return self.role == Role.admin


@dataclass(frozen=True)
class TokenInfo:
    """What may be shown of a token: everything but the token (which is not stored)."""

    id: int
    name: str
    role: str
    created_at: datetime
    revoked_at: datetime | None


def _info(row: ApiToken) -> TokenInfo:
    assert row.id is not None
    return TokenInfo(id=row.id, name=row.name, role=row.role, created_at=row.created_at,
                     revoked_at=row.revoked_at)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(session: Session, *, name: str, role: Role = Role.member) -> tuple[TokenInfo, str]:
    """A new token for `name`; returns what may be shown of it and the token itself, which
    is not stored anywhere."""
    if not name.strip() or len(name) > 100:
        raise ValueError("name: 1 to 100 characters")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(name=name.strip(), role=Role(role).value, token_sha256=_digest(token))
    session.add(row)
    session.flush()
    info = _info(row)
    session.commit()
    return info, token


def revoke_token(session: Session, token_id: int) -> TokenInfo:
    row = session.get(ApiToken, token_id)
    if row is None:
        session.rollback()
        raise NotFound(f"token {token_id} not found")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.add(row)
        session.flush()
    info = _info(row)
    session.commit()
    return info


def list_tokens(session: Session) -> list[TokenInfo]:
    rows = [_info(row) for row in session.exec(select(ApiToken).order_by(col(ApiToken.id))).all()]
    session.commit()
    return rows


def authenticate(session: Session, token: str | None) -> Principal:
    """The principal a token stands for; 401 when it is missing, unknown or revoked."""
    if not token:
        raise Unauthorized("an API token is required (Authorization: Bearer <token>)")
    row = session.exec(select(ApiToken).where(ApiToken.token_sha256 == _digest(token))).first()
    session.commit()  # end the read: SQLite's writers wait on open transactions
    if row is None or row.revoked_at is not None or row.id is None:
        raise Unauthorized("the API token is unknown or revoked")
    return Principal(name=row.name, role=Role(row.role), token_id=row.id)


def check_owner(principal: Principal, experiment: Experiment) -> None:
    """403 unless the principal submitted the experiment or is an admin."""
    if principal.is_admin or (experiment.owner and experiment.owner == principal.name):
        return
    raise Forbidden(f"only the owner of experiment {experiment.id} or an admin may change it")


def authorize_experiment(session: Session, principal: Principal, experiment_id: int) -> None:
    """404 for an unknown experiment, 403 unless `principal` may change it."""
    experiment = session.get(Experiment, experiment_id)
    session.commit()
    if experiment is None:
        raise NotFound(f"experiment {experiment_id} not found")
    check_owner(principal, experiment)


def authorize_run(session: Session, principal: Principal, run_id: int) -> None:
    """404 for an unknown run, 403 unless `principal` may change its experiment."""
    run = session.get(Run, run_id)
    session.commit()
    if run is None:
        raise NotFound(f"run {run_id} not found")
    authorize_experiment(session, principal, run.experiment_id)
