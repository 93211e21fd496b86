"""Files the tests read from `tests/fixtures/` (public files of the challenge's repository; see
`tests/fixtures/README.md`). They are part of the repository: a missing one is an error, never a
reason to skip."""

from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures"
RECORD_LOGS = FIXTURES / "record-logs"
TOKENIZERS = FIXTURES / "tokenizers"
# A small challenge repository of our own in the real layout: README.md with the two
# leaderboard tables, records/<track>/<date>_<name>/ folders (tests/fixtures/README.md).
RECORDS_TREE = FIXTURES / "records-tree"
SP1024 = TOKENIZERS / "fineweb_1024_bpe.model"
SP8192 = TOKENIZERS / "fineweb_8192_bpe.model"


def fixture_bytes(path: Path) -> bytes:
    """The bytes of a fixture file; FileNotFoundError names it when the checkout lacks it."""
    if not path.is_file():
        raise FileNotFoundError(f"test fixture {path} is missing from the checkout")
    return path.read_bytes()


def record_log(name: str) -> bytes:
    """A record log of `tests/fixtures/record-logs/` by file name."""
    return fixture_bytes(RECORD_LOGS / name)


def records_tree() -> Path:
    """The root of `tests/fixtures/records-tree/`; FileNotFoundError when the checkout lacks it."""
    fixture_bytes(RECORDS_TREE / "README.md")
    return RECORDS_TREE
