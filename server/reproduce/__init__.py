"""Re-runs of a submission: where its records folder comes from (`sources`), what it documents
(`documented`: env, data), the editable plan shown before launch and the linked script
experiment (`plan`).

A records folder reaches Caddie as an imported record (its folder on disk when still there,
else its stored code), a folder path, a zip, or a git repository at a commit. Its plan holds
every file the run needs byte for byte with each file's sha256 (sub-folders as relative paths,
binary files such as a tokenizer model as they are; not its logs, README, submission or
pictures), the script it launches (`entry_point`: the one its README's or shell scripts'
`torchrun` / `python` lines run, else train_gpt.py, else its only trainer-like `*.py`) and
the files its code bytes count (`counted_paths`); the environment its README's command lines
set in front of `torchrun` / `python` (per seed where they differ; `\\` continuations,
`export X=..` lines, `for SEED in ...` loops), else the hyperparameters its logs echo for the
names its code reads; the tokenizer and dataset variant; the seeds it claims; and the claims
themselves (per seed val_bpb, val_loss, bytes, times), which `server.rerun` judges the re-run
against. Sources on the server's own disk (a path, a `file://` repository) are for admins.
"""

from server.reproduce.documented import (
    code_env_names,
    data_env,
    data_variant,
    documented_env,
    log_env,
    readme_commands,
)
from server.reproduce.plan import (
    Overrides,
    Plan,
    apply,
    counted_paths,
    create_rerun,
    entry_point,
    plan_folder,
    plan_record,
)
from server.reproduce.sources import GitSource, SourceError, git_source, path_source, zip_source

__all__ = [
    "GitSource", "Overrides", "Plan", "SourceError", "apply", "code_env_names", "counted_paths",
    "create_rerun", "data_env", "data_variant", "documented_env", "entry_point", "git_source",
    "log_env", "path_source", "plan_folder", "plan_record", "readme_commands", "zip_source",
]
