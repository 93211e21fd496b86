"""Where a records folder comes from: a folder path, a zip, or a git repository at a commit,
each read into a temporary folder holding exactly one records folder."""


import io
import re
import shutil
import subprocess
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from server import records

MAX_ZIP_BYTES = 50_000_000
MAX_UNZIPPED_BYTES = 200_000_000
GIT_TIMEOUT_S = 120
_GIT_SCHEMES = ("https://", "http://", "git://", "ssh://")
_COMMIT = re.compile(r"^[0-9a-fA-F]{7,40}$")
class SourceError(ValueError):
    """A source Caddie cannot read; the message names the field (`source.url`, ...)."""


# --- sources -----------------------------------------------------------------------------------


class GitSource(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(min_length=1, max_length=500)
    commit: str = Field(min_length=7, max_length=40)
    path: str = Field(default="", max_length=300)  # the records folder inside the repository


@contextmanager
def path_source(path: str) -> Iterator[Path]:
    folder = Path(path)
    if not folder.is_dir():
        raise SourceError(f"source.path: {path!r} is not a folder")
    yield _one_record_folder(folder, "source.path")


@contextmanager
def zip_source(data: bytes, inner: str = "") -> Iterator[Path]:
    """The records folder in a zip, unpacked into a temporary folder (names checked: no
    absolute path, no `..`, no link; sizes capped)."""
    if len(data) > MAX_ZIP_BYTES:
        raise SourceError(f"source.zip: {len(data):,} bytes, the limit is {MAX_ZIP_BYTES:,}")
    with tempfile.TemporaryDirectory(prefix="caddie-reproduce-") as tmp:
        root = Path(tmp)
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                _unzip(archive, root)
        except zipfile.BadZipFile:
            raise SourceError("source.zip: not a zip file") from None
        yield _one_record_folder(_inside(root, inner, "source.path"), "source.zip")


def _unzip(archive: zipfile.ZipFile, root: Path) -> None:
    total = 0
    for info in archive.infolist():
        name = info.filename
        parts = Path(name).parts
        if name.startswith(("/", "\\")) or ".." in parts or (info.external_attr >> 28) == 0o12:
            raise SourceError(f"source.zip: {name!r} would land outside the folder (or is a link)")
        total += info.file_size
        if total > MAX_UNZIPPED_BYTES:
            raise SourceError(f"source.zip: more than {MAX_UNZIPPED_BYTES:,} bytes unpacked")
        if info.is_dir():
            continue
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(archive.read(info))


@contextmanager
def git_source(source: GitSource, *, allow_file: bool) -> Iterator[Path]:
    """The folder `source.path` of the repository at `source.commit`, fetched into a temporary
    folder. Only https/http/git/ssh transports (and file:// or a local path where allowed)."""
    url = source.url
    local = url.startswith("file://") or url.startswith("/")
    if not (url.startswith(_GIT_SCHEMES) or (local and allow_file)):
        raise SourceError(f"source.url: {url[:100]!r} is not an https, http, git or ssh URL"
                          + ("" if allow_file else " (local repositories are for admins)"))
    if not _COMMIT.match(source.commit):
        raise SourceError(f"source.commit: {source.commit!r} is not a commit hash")
    with tempfile.TemporaryDirectory(prefix="caddie-reproduce-") as tmp:
        repo, tree = Path(tmp) / "repo", Path(tmp) / "tree"
        _git(["init", "-q", "--bare", str(repo)], None, allow_file)
        if _git(["fetch", "-q", "--depth=1", url, source.commit], repo, allow_file, check=False) != 0:
            _git(["fetch", "-q", url, "+refs/heads/*:refs/heads/*"], repo, allow_file)
        tree.mkdir()
        archive = _git_output(["archive", "--format=tar", source.commit], repo, allow_file)
        shutil.unpack_archive(_write_temp(archive, Path(tmp) / "tree.tar"), tree, filter="data")
        yield _one_record_folder(_inside(tree, source.path, "source.path"), "source.path")


def _git_env() -> dict[str, str]:
    return {"GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1", "HOME": "/nonexistent",
            "PATH": "/usr/bin:/bin:/usr/local/bin", "GIT_SSH_COMMAND": "ssh -o BatchMode=yes"}


def _git_config(allow_file: bool) -> list[str]:
    file_rule = "always" if allow_file else "never"
    return ["-c", "protocol.allow=never", "-c", "protocol.https.allow=always",
            "-c", "protocol.http.allow=always", "-c", "protocol.git.allow=always",
            "-c", "protocol.ssh.allow=always", "-c", f"protocol.file.allow={file_rule}"]


def _git(args: list[str], repo: Path | None, allow_file: bool, *, check: bool = True) -> int:
    where = ["--git-dir", str(repo)] if repo else []
    try:
        done = subprocess.run(["git", *_git_config(allow_file), *where, *args], env=_git_env(),
                              capture_output=True, timeout=GIT_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise SourceError(f"source.url: git {args[0]} took over {GIT_TIMEOUT_S} s") from None
    if check and done.returncode != 0:
        raise SourceError(f"source.url: git {args[0]} failed: "
                          f"{done.stderr.decode(errors='replace').strip()[-300:]}")
    return done.returncode


def _git_output(args: list[str], repo: Path, allow_file: bool) -> bytes:
    done = subprocess.run(["git", *_git_config(allow_file), "--git-dir", str(repo), *args],
                          env=_git_env(), capture_output=True, timeout=GIT_TIMEOUT_S, check=False)
    if done.returncode != 0:
        raise SourceError(f"source.commit: {done.stderr.decode(errors='replace').strip()[-300:]}")
    return done.stdout


def _write_temp(data: bytes, path: Path) -> Path:
    path.write_bytes(data)
    return path


def _inside(root: Path, inner: str, where: str) -> Path:
    folder = (root / inner.strip("/")).resolve()
    if not folder.is_relative_to(root.resolve()) or not folder.is_dir():
        raise SourceError(f"{where}: {inner!r} is not a folder of the source")
    return folder


def _one_record_folder(root: Path, where: str) -> Path:
    found = records.find_record_folders(root)
    if not found:
        raise SourceError(f"{where}: no records folder (no submission.json or train log) found")
    if len(found) > 1:
        names = ", ".join(str(f.relative_to(root)) or "." for f in found[:5])
        raise SourceError(f"{where}: {len(found)} records folders ({names}); name one")
    return found[0]
