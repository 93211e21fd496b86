"""`server.records` export: a records folder for a pull request, and the import/export round trip."""

import io
import json
import re
import statistics
import zipfile
from pathlib import Path

import pytest
from sqlmodel import Session, select

from server import export, records
from server.communitylog import parse_log
from server.errors import NotFound
from server.experiments import finalize_experiment
from server.models import Experiment
from tests.factories import make_experiment, make_log, make_scored_run
from tests.server.test_records import (
    HONEST_LOGS,
    SCRIPT,
    fixture_log,
    honest_submission,
    make_folder,
)
from trainer import bundle, singlefile


def test_import_then_export_round_trips_the_numbers(session: Session, tmp_path: Path) -> None:
    source = make_folder(tmp_path / "records", "2026-04-11_Honest",
                         {n: fixture_log(n) for n in HONEST_LOGS}, honest_submission())
    (imported,) = records.import_records(session, source)
    out = tmp_path / "out" / "2026-04-11_Honest"
    export.export_to(session, imported.experiment_id, out)

    truth = {p["seed"]: p for p in (parse_log(fixture_log(n)) for n in HONEST_LOGS)}
    submission = json.loads((out / "submission.json").read_text())
    assert submission["seeds"] == [42, 1234, 0]
    for seed, parsed in truth.items():
        row = submission["seed_results"][str(seed)]
        assert (row["val_bpb"], row["val_loss"], row["bytes_total"]) == (
            parsed["score"]["val_bpb"], parsed["score"]["val_loss"], parsed["bytes_total"])
        assert (out / f"train_seed{seed}.log").read_bytes() == fixture_log(
            next(n for n in HONEST_LOGS if parse_log(fixture_log(n))["seed"] == seed))
    assert submission["val_bpb"] == pytest.approx(  # 8 decimals, as the logs print it
        statistics.fmean(p["score"]["val_bpb"] for p in truth.values()), abs=5e-9)
    assert submission["bytes_total"] == max(p["bytes_total"] for p in truth.values())
    assert (submission["name"], submission["author"], submission["github_id"], submission["date"]) == (
        "Three honest seeds", "Grace", "grace-h", "2026-04-11T09:30:00Z")
    assert (out / "train_gpt.py").read_text() == SCRIPT

    # The exported folder, imported again, says the same and disagrees with nothing.
    (again,) = records.import_records(session, out)
    assert again.created and again.disagreements == []
    assert again.mean_val_bpb == pytest.approx(imported.mean_val_bpb, abs=1e-12)


# What the worker uploads for a trainer run: the compressed single file (worker/bundle.py).
UPLOADED = bundle.compress(bundle.flatten(bundle.package_dir()))


def trainer_experiment(session: Session, data_dir: Path) -> Experiment:
    experiment = make_experiment(session, name="Wider MLP", author="ada", preset="record",
                                 config={"mlp_mult": 3}, seeds=(1337, 42, 7), reference_bpb=1.30)
    results = {"versions": {"torch": "2.6.0", "numpy": "2.1.0"},
               "worker": {"preflight": {"python": "3.11.9", "gpus": ["NVIDIA H100 80GB HBM3"] * 8}}}
    for seed, bpb, total in ((1337, 1.2001, 15_900_000), (42, 1.2011, 15_950_000), (7, 1.1995, 15_910_000)):
        run = make_scored_run(session, experiment, seed=seed, val_bpb=bpb, bytes_total=total,
                              steps=7000, results=results)
        make_log(session, run, [f"seed:{seed}\n", f"final_int8_zlib_roundtrip_exact val_loss:2.0 val_bpb:{bpb}\n"])
        code = data_dir / "runs" / str(run.id) / "code"
        code.mkdir(parents=True)
        (code / "train_gpt.py").write_text(UPLOADED)
    make_scored_run(session, experiment, seed=7, val_bpb=1.5, status="failed", superseded=True)
    make_scored_run(session, experiment, seed=1337, val_bpb=1.0, variant="wider")
    finalize_experiment(session, experiment.id)
    session.refresh(experiment)
    return experiment


def test_export_of_a_trainer_experiment(session: Session, data_dir: Path) -> None:
    experiment = trainer_experiment(session, data_dir)
    files = export.export_files(session, experiment.id, github_id="ada-l")
    assert sorted(files) == ["README.md", "submission.json", "train_gpt.py", "train_seed1337.log",
                             "train_seed42.log", "train_seed7.log"]
    submission = json.loads(files["submission.json"])
    assert submission["seeds"] == [1337, 42, 7]  # the control's succeeded seeds only
    assert submission["val_bpb"] == pytest.approx((1.2001 + 1.2011 + 1.1995) / 3, abs=5e-9)
    assert submission["val_bpb_std"] == pytest.approx(statistics.stdev([1.2001, 1.2011, 1.1995]), abs=5e-9)
    # The counted code is the exported, readable train_gpt.py; each seed adds its artifact.
    script = files["train_gpt.py"]
    assert submission["bytes_code"] == len(script) and b"b85decode" not in script
    assert submission["bytes_total"] == len(script) + 15_750_000
    assert submission["seed_results"]["42"]["bytes_total"] == len(script) + 15_750_000
    assert "compressed script Caddie uploads (50,000 bytes)" in submission["bytes_note"]
    assert submission["github_id"] == "ada-l"
    assert submission["hardware"] == "8x NVIDIA H100 80GB HBM3"
    assert submission["versions"] == {"torch": "2.6.0", "numpy": "2.1.0", "python": "3.11.9"}
    assert submission["statistics"] == experiment.stats and submission["statistics"]["p"] < 0.01
    assert submission["config"] == {"kind": "trainer", "preset": "record", "overrides": {"mlp_mult": 3},
                                    "variants": []}
    # The settings of the run are the script's defaults; the records' data paths.
    assert "    preset = 'record'\n" in script.decode() and "    mlp_mult = 3\n" in script.decode()
    assert "    seed = 1337\n" in script.decode()
    assert "    data_path = './data/datasets/fineweb10B_sp1024'\n" in script.decode()
    assert isinstance(submission["blurb"], str) and "preset record (mlp_mult=3)" in submission["blurb"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", submission["date"])
    assert submission["compliance"] == {"train_under_600s": True, "eval_under_600s": True,
                                        "artifact_under_16mb": True, "three_seeds": True}
    assert submission["pytorch_version"] == "2.6.0"
    assert files["train_seed42.log"] == b"seed:42\nfinal_int8_zlib_roundtrip_exact val_loss:2.0 val_bpb:1.2011\n"
    readme = files["README.md"].decode()
    assert "| 42 | 1.20110000 | " in readme and f"| {len(script) + 15_750_000:,} |" in readme
    # The stored test is per token (the challenge's unit), and the README says so.
    assert "one-sided one-sample t-test, in nats_per_token" in readme
    assert f"t {experiment.stats['t']:.3f}, df 2.00" in readme
    assert '"mlp_mult": 3' in readme and "--config run.json" not in readme and str(data_dir) not in readme
    for seed in (1337, 42, 7):
        assert f"SEED={seed} torchrun --standalone --nproc_per_node=8 train_gpt.py train --out seed{seed}\n" \
            in readme
    assert "- `train_gpt.py`" in readme


def test_export_zip_holds_the_same_files_under_one_folder(session: Session, data_dir: Path) -> None:
    experiment = trainer_experiment(session, data_dir)
    files = export.export_files(session, experiment.id)
    with zipfile.ZipFile(io.BytesIO(export.export_zip(session, experiment.id))) as archive:
        names = archive.namelist()
        top = export.folder_name(experiment)
        assert top.endswith("_Wider_MLP") and all(n.startswith(f"{top}/") for n in names)
        assert {n.removeprefix(f"{top}/"): archive.read(n) for n in names} == files


def test_export_refuses_a_folder_that_holds_files(session: Session, data_dir: Path,
                                                  tmp_path: Path) -> None:
    experiment = trainer_experiment(session, data_dir)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not an empty directory"):
        export.export_to(session, experiment.id, tmp_path / "taken")
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["keep.txt"]


def test_an_export_that_fails_part_way_leaves_no_folder(session: Session, data_dir: Path,
                                                       tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    experiment = trainer_experiment(session, data_dir)
    real_write, written = Path.write_bytes, []

    def disk_full_after_two(path: Path, data: bytes) -> int:
        if len(written) == 2:
            raise OSError(28, "No space left on device")
        written.append(path)
        return real_write(path, data)

    monkeypatch.setattr(Path, "write_bytes", disk_full_after_two)
    with pytest.raises(OSError):
        export.export_to(session, experiment.id, tmp_path / "exports" / "out")
    assert list((tmp_path / "exports").iterdir()) == []  # neither the target nor the staging folder


def test_export_of_an_unknown_experiment_is_not_found(session: Session) -> None:
    with pytest.raises(NotFound):
        export.export_files(session, 999)
    assert session.exec(select(Experiment)).all() == []


def test_the_readme_of_an_ablation_carries_its_table(session: Session) -> None:
    from tests.server.test_ablation import CONTROL, study

    experiment = study(session)
    finalize_experiment(session, experiment.id)
    files = export.export_files(session, experiment.id)
    submission = json.loads(files["submission.json"])
    assert submission["seeds"] == sorted(CONTROL)  # the control arm is the submission
    readme = files["README.md"].decode()
    row = next(r for r in experiment.stats["ablation"]["rows"] if r["variant"] == "wider")
    assert "## Ablation" in readme
    assert (f"| wider | `mlp_mult=3` | 4 | {row['mean_diff_bpb']:.6f} | "
            f"[{row['ci_low']:.6f}, {row['ci_high']:.6f}] |") in readme
    assert "| noisy | `matrix_lr=0.05`, `warmdown_iters=800` | 3 |" in readme


def test_an_import_without_a_stated_date_exports_its_folder_date(session: Session, tmp_path: Path) -> None:
    submission = {k: v for k, v in honest_submission().items() if k != "date"}
    source = make_folder(tmp_path / "records", "2026-04-11_Honest",
                         {n: fixture_log(n) for n in HONEST_LOGS}, submission)
    (imported,) = records.import_records(session, source)
    files = export.export_files(session, imported.experiment_id)
    assert json.loads(files["submission.json"])["date"] == "2026-04-11T00:00:00Z"
    experiment = session.get(Experiment, imported.experiment_id)
    assert export.folder_name(experiment) == "2026-04-11_Three_honest_seeds"


def test_a_compressed_export_counts_the_compressed_script_and_keeps_its_source_beside(
        session: Session, data_dir: Path) -> None:
    experiment = trainer_experiment(session, data_dir)
    readable = export.export_files(session, experiment.id)["train_gpt.py"]
    files = export.export_files(session, experiment.id, compressed=True, blurb="Wider MLP, 3 seeds.")
    assert files["train_gpt_source.py"] == readable  # the source beside it, not counted
    assert export.readable_source(files["train_gpt.py"]) == readable.decode()
    submission = json.loads(files["submission.json"])
    assert submission["bytes_code"] == len(files["train_gpt.py"]) < len(readable) / 2
    assert submission["blurb"] == "Wider MLP, 3 seeds."


def test_the_server_reads_and_rewrites_the_single_file_the_trainer_builds(tmp_path: Path) -> None:
    """Both sides write the format of trainer.singlefile: what `bundle --compressed` writes,
    the export reads back and re-settles as the builder would have written it."""
    settings = {"preset": "tiny", "num_layers": 2, "seed": 7, "data_path": "./d"}
    script = bundle.build_single_file(bundle.package_dir(), tmp_path, settings=settings, compressed=True)
    source = (tmp_path / "train_gpt_source.py").read_text()
    assert source == bundle.flatten(bundle.package_dir(), settings)
    assert export.readable_source(script.read_bytes()) == source
    other = {**settings, "num_layers": 3}
    assert singlefile.with_settings(source, other) == bundle.flatten(bundle.package_dir(), other)
    # The format's module describes the single file and is not part of it.
    assert "trainer/singlefile.py" not in source and "trainer/contract.py" in source


def test_code_that_is_not_the_single_file_is_exported_as_uploaded(session: Session, data_dir: Path) -> None:
    experiment = make_experiment(session, name="Old", preset="record", seeds=(1,))
    run = make_scored_run(session, experiment, seed=1, val_bpb=1.2)
    code = data_dir / "runs" / str(run.id) / "code"
    code.mkdir(parents=True)
    (code / "train_gpt.py").write_text('PAYLOAD = (b"not ours")\n')
    files = export.export_files(session, experiment.id)
    assert files["train_gpt.py"] == b'PAYLOAD = (b"not ours")\n'
    submission = json.loads(files["submission.json"])
    assert submission["bytes_code"] == 50_000 and submission["bytes_total"] == 15_800_000  # the run's
    assert "predates readable exports" in submission["bytes_note"]
