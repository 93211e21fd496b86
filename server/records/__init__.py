"""Records folders of the challenge repository: imported as finished experiments, and written
from ours for a pull request.

A records folder (`records/<track>/<date>_<name>/`) holds `submission.json` (the submitter's
stated values), `README.md`, the counted code (`train_gpt.py`) and one train log per seed.

Import reads every such folder under a directory into one finished experiment with one run
per seed log, its numbers read by `server.communitylog`, judged by the rules a log can show
(`log_reasons`), and lists where the stated values disagree with the logs. Imported
experiments have provider `import`: their runs are created already ended, with no pod, so
neither the worker nor the reconciler ever acts on them. A folder is imported once, keyed by
`<track>/<folder>`.

The parts, each using only those before it: `reader` (a folder's files read, one counted log
per seed), `checks` (disagreements and the rules a log can show), `importer` (experiments and
runs written). Export, the other direction, lives in `server/export.py`.
"""

from server.communitylog import parse_log
from server.records.checks import disagreements, log_reasons
from server.records.importer import (
    IMPORT_PRESET,
    IMPORT_PROVIDER,
    ImportResult,
    _imported_keys,
    _log_bytes,
    _text,
    import_record,
    import_records,
    official_note,
)
from server.records.reader import (
    NOT_LOGS,
    SUBMISSION,
    RecordFolder,
    SeedLog,
    _is_submission,
    _looks_like_train_log,
    _plain_file,
    find_record_folders,
    read_record_folder,
    stated_seeds,
)

# The names other modules and the tests use, as they did when this package was one module
# (the underscored ones by server/export.py, server/reproduce.py and the tests).
__all__ = [
    "IMPORT_PRESET", "IMPORT_PROVIDER", "NOT_LOGS", "SUBMISSION", "ImportResult", "RecordFolder", "SeedLog",
    "_imported_keys", "_is_submission", "_log_bytes", "_looks_like_train_log", "_plain_file", "_text", "disagreements", "find_record_folders",
    "import_record", "import_records", "log_reasons", "official_note", "parse_log",
    "read_record_folder", "stated_seeds",
]
