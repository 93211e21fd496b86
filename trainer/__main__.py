"""Command line: `python -m trainer {train, eval, data build, data fetch, bundle}`.

User errors (a bad config value, a missing path, an unreadable artifact) print one line
on stderr and exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from trainer.config import ConfigError, load_config

USAGE_ERROR = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train, export the int8+zlib artifact, score it")
    train.add_argument("--config", help='run.json: {"preset": NAME, FIELD: VALUE, ...}')
    train.add_argument("--out", default=".", help="run directory for logs, results and artifact")

    score = commands.add_parser("eval", help="score an artifact alone, in a fresh process")
    score.add_argument("--artifact", required=True, help="final_model.int8.ptz")
    score.add_argument("--data-path", help="folder with fineweb_val_*.bin (default: as trained)")
    score.add_argument("--tokenizer-path", help="SentencePiece .model (default: as trained)")
    score.add_argument("--json", action="store_true", help="print one JSON object")

    bundle = commands.add_parser("bundle", help="the trainer as one readable train_gpt.py")
    bundle.add_argument("--single-file", action="store_true", required=True,
                        help="one script holding the whole package (the only form)")
    bundle.add_argument("--out", default="train_gpt.py", help="file or folder to write")
    bundle.add_argument("--settings", dest="settings_file", help='JSON file {"preset": NAME, FIELD: VALUE, ...}: '
                        "the script's Hyperparameters (default: the baseline preset)")
    bundle.add_argument("--compressed", action="store_true",
                        help="write the lzma+base85 form, with the readable source beside it")

    data = commands.add_parser("data", help="datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    build = data_commands.add_parser("build", help="tokenizer + shards from your documents")
    build.add_argument("--text", required=True, help="folder of *.txt / *.jsonl documents")
    build.add_argument("--out", required=True, help="output root (tokenizers/, datasets/)")
    build.add_argument("--vocab-size", type=int, default=1024)
    build.add_argument(
        "--val-docs", type=int, help="first N documents are validation (default: a tenth)"
    )
    build.add_argument("--name", help="dataset/tokenizer name (default: custom_sp<vocab>)")
    build.add_argument("--tokenizer", help="use this .model instead of training one")
    fetch = data_commands.add_parser("fetch", help="official shards + tokenizer (resumable)")
    fetch.add_argument("--variant", default="sp1024", help="sp1024, sp8192, byte260, ...")
    fetch.add_argument("--train-shards", type=int, default=1, help="training shards to fetch")
    fetch.add_argument("--out", default="./data", help="local root (datasets/, tokenizers/)")
    fetch.add_argument("--endpoint", "--base-url", dest="endpoint",
                       help="the Hugging Face Hub or a mirror (default: $HF_ENDPOINT, else huggingface.co)")
    fetch.add_argument("--repo", help="dataset repository (default: $MATCHED_FINEWEB_REPO_ID, "
                                      "else willdepueoai/parameter-golf)")
    fetch.add_argument("--revision", help="branch, tag or commit of the dataset (default: main)")
    fetch.add_argument("--cache-dir", help="huggingface_hub's cache (default: $HF_HUB_CACHE, else its own)")
    fetch.add_argument("--root", default="datasets", help="folder of manifest.json under it")
    fetch.add_argument("--jobs", type=int, default=8, help="shards downloaded at once")
    return parser


def _train(args: argparse.Namespace) -> int:
    # Before importing torch: fast to fail.
    config = load_config(args.config, os.environ, getattr(args, "settings", None))
    from trainer.train import run

    run(config, args.out)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from trainer.train import score_artifact

    result = score_artifact(args.artifact, args.data_path, args.tokenizer_path)
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{result['score_tag']} val_loss:{result['val_loss']:.8f} "
            f"val_bpb:{result['val_bpb']:.8f}"
        )
    return 0


def _bundle(args: argparse.Namespace) -> int:
    if not __package__:  # the single file itself, which carries no package to build from
        raise ConfigError("the single file cannot rebuild itself: run `python -m trainer bundle`")
    from trainer.bundle import build_single_file, package_dir

    settings = load_config(args.settings_file, {}).as_dict() if args.settings_file else None
    print(build_single_file(package_dir(), args.out, settings=settings, compressed=args.compressed))
    return 0


def _data(args: argparse.Namespace) -> int:
    return _data_fetch(args) if args.data_command == "fetch" else _data_build(args)


def _data_fetch(args: argparse.Namespace) -> int:
    from trainer.hub import fetch

    fetched = fetch(args.variant, args.train_shards, args.out, args.endpoint, args.root, repo=args.repo,
                    revision=args.revision, cache_dir=args.cache_dir, jobs=args.jobs)
    print(fetched.data_path)
    print(fetched.tokenizer_path or "")
    return 0


def _data_build(args: argparse.Namespace) -> int:
    from trainer.corpus import build

    built = build(
        args.text,
        args.out,
        vocab_size=args.vocab_size,
        val_docs=args.val_docs,
        name=args.name,
        tokenizer=args.tokenizer,
    )
    print(built.tokenizer_path)
    print(built.dataset_dir)
    return 0


def _user_errors() -> tuple[type[BaseException], ...]:
    from trainer.corpus import CorpusError
    from trainer.data import ShardError
    from trainer.evaluate import TokenizerError
    from trainer.hub import FetchError
    from trainer.quantize import ArtifactError
    from trainer.train import LaunchError

    return (
        ConfigError, CorpusError, ShardError, TokenizerError, ArtifactError, LaunchError, FetchError
    )


def main(argv: list[str] | None = None, settings: dict | None = None) -> int:
    """`settings`: the single-file form's Hyperparameters, used when no --config is given."""
    args = _parser().parse_args(argv)
    args.settings = settings
    handlers = {"train": _train, "eval": _eval, "data": _data, "bundle": _bundle}
    try:
        return handlers[args.command](args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except Exception as exc:
        if isinstance(exc, _user_errors()):
            print(f"error: {exc}", file=sys.stderr)
            return USAGE_ERROR
        raise


if __name__ == "__main__":
    sys.exit(main())
