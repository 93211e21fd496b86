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
    clean_text,
    import_record,
    import_records,
    imported_keys,
    official_note,
    run_log_bytes,
)
from server.records.reader import (
    NOT_LOGS,
    SUBMISSION,
    RecordFolder,
    SeedLog,
    find_record_folders,
    is_submission,
    looks_like_train_log,
    plain_file,
    read_record_folder,
    stated_seeds,
)

# The names other modules and the tests use, as they did when this package was one module.
__all__ = [
    "IMPORT_PRESET", "IMPORT_PROVIDER", "NOT_LOGS", "SUBMISSION", "ImportResult", "RecordFolder", "SeedLog",
    "clean_text", "disagreements", "find_record_folders", "import_record", "import_records", "imported_keys",
    "is_submission", "log_reasons", "looks_like_train_log", "official_note", "parse_log", "plain_file",
    "read_record_folder", "run_log_bytes", "stated_seeds",
]
