"""What a records folder documents for its re-run: the README's command env (per seed,
continuations, exports, loops, markdown escapes), the logs' echoed hyperparameters, the data
variant, the counted code byte for byte, and the sources (path, zip, git at a commit)."""

import hashlib
import io
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from server import reproduce, scripts
from server.reproduce import GitSource, SourceError
from tests.fixture_files import FIXTURES, fixture_bytes

READMES = FIXTURES / "reproduce" / "readmes"
RECORDS = FIXTURES / "reproduce" / "records"


def readme(name: str) -> str:
    return fixture_bytes(READMES / name).decode()


def test_per_seed_lines_split_into_common_and_per_seed_env() -> None:
    found = reproduce.documented_env(readme("per_seed.md"), [], {})
    assert found.source == "readme"
    assert found.env == {"PARALLEL_START_LAYER": "7", "RECUR_LAYERS": "4,5"}
    assert found.seed_env == {"42": {"RECUR_START_STEP": "3000"}, "1337": {"RECUR_START_STEP": "3000"},
                              "2024": {"RECUR_START_STEP": "2500"}}
    assert found.seeds == [42, 1337, 2024]


def test_a_single_line_command_keeps_every_assignment_but_the_shell_variable() -> None:
    commands = reproduce.readme_commands(readme("per_seed.md"))
    first = commands.envs[0]
    assert first["BIGRAM_DIM"] == "112" and first["RECUR_LAYERS"] == "4,5" and "SEED" not in first
    assert len(first) == 8 and len(commands.envs) == 4


def test_markdown_escaped_continuations_are_read_as_the_shell_would() -> None:
    found = reproduce.documented_env(readme("markdown_escaped.md"), [], {})
    assert found.env == {"DATA_PATH": "./data/datasets/fineweb10B_sp1024",
                         "TOKENIZER_PATH": "./data/tokenizers/fineweb_1024_bpe.model",
                         "VOCAB_SIZE": "1024", "TRAIN_LOG_EVERY": "200"}


def test_a_seed_loop_gives_the_seeds_and_a_shell_variable_is_left_out() -> None:
    found = reproduce.documented_env(readme("seed_loop.md"), [], {})
    assert found.seeds == [42, 0, 1234]
    assert found.env["CASEOPS_ENABLED"] == "1" and found.env["GATED_ATTN_INIT_STD"] == "0.005"
    assert found.env["NCCL_NET"] == "Socket" and "SEED" not in found.env and found.seed_env == {}
    variant = reproduce.data_variant(found.env, [], {}, readme("seed_loop.md"))
    assert variant["dataset"] == "sp8192_lossless_caps_caseops_v1_reserved"


def test_exports_absolute_data_paths_and_reserved_names() -> None:
    found = reproduce.documented_env(readme("absolute_paths.md"), [], {})
    assert found.env == {"COMPILE_MODE": "default", "OMP_NUM_THREADS": "1"}
    assert any("DATA_PATH=/root/code" in note for note in found.notes)
    assert any(note.startswith("LD_PRELOAD") for note in found.notes)
    # The pip line launches no training script.
    assert len(reproduce.readme_commands(readme("absolute_paths.md")).envs) == 1


def test_prose_is_not_a_command() -> None:
    text = "Run it with `torchrun` on 8 GPUs. It's fast.\nWe set LR=0.1 and ran python.\n"
    assert reproduce.readme_commands(text).envs == []


def test_env_from_logs_only_for_names_the_code_reads() -> None:
    code = {"train_gpt.py": "x = os.environ.get('MATRIX_LR', 0.04)\ny = os.getenv(\"NUM_LAYERS\")\n"}
    log = ("Hyperparameters:\n  matrix_lr: 0.025\n  adam_eps: 1e-08\n  seed: 7\n"
           "num_layers:11 model_dim:512\nstep:1/10 train_loss:6.9\n  matrix_lr: 9\n")
    found = reproduce.documented_env("no commands here", [log], code)
    assert found.source == "logs" and found.env == {"MATRIX_LR": "0.025", "NUM_LAYERS": "11"}


def test_tokenizer_variant_from_env_log_or_code() -> None:
    assert reproduce.data_variant({}, ["tokenizer_path: ./data/tokenizers/fineweb_8192_bpe.model"], {}, "")[
        "tokenizer"] == "sp8192"
    from_code = reproduce.data_variant({}, [], {"a.py": "p='./data/datasets/fineweb10B_sp4096'"}, "")
    assert from_code == {"tokenizer": "sp4096", "tokenizer_from": "code", "dataset": "sp4096"}
    assert reproduce.data_env(from_code, {}) == {
        "DATA_PATH": "./data/datasets/fineweb10B_sp4096", "TOKENIZER_PATH": "./data/tokenizers/fineweb_4096_bpe.model"}
    assert reproduce.data_env(reproduce.data_variant({}, [], {}, ""), {}) == {}
    # The code's default wins over another variant its docstring or a preset table mentions first.
    exported = ('"""The data: ./data/datasets/fineweb10B_sp1024/ (TOKENIZER_PATH=...)."""\n'
                "    data_path = './data/datasets/fineweb10B_sp512'\n"
                "PRESETS = {'big': {'data_path': './data/datasets/fineweb10B_sp8192'}}\n")
    assert reproduce.data_variant({}, [], {"train_gpt.py": exported}, "")["tokenizer"] == "sp512"
    community = 'data_path = os.environ.get("DATA_PATH", "./data/datasets/fineweb10B_sp4096")'
    assert reproduce.data_variant({}, [], {"train_gpt.py": "# sp1024 baseline\n" + community}, "")["tokenizer"] == "sp4096"


def test_a_folder_plan_carries_every_code_file_byte_equal_with_claims_and_seed_env() -> None:
    folder = RECORDS / "good"
    plan = reproduce.plan_folder(folder, {"kind": "path"})
    assert sorted(plan.files) == ["train_gpt.py", "train_gpt_decode.py"]
    for name, data in plan.files.items():
        assert data == (folder / name).read_bytes()
    assert plan.entrypoint == "train_gpt.py"
    assert plan.counted == ["train_gpt.py", "train_gpt_decode.py"]  # runpy.run_path names the second
    public = plan.public(provider="runpod")
    facts = {f["name"]: f for f in public["files"]}
    assert facts["train_gpt.py"]["sha256"] == hashlib.sha256((folder / "train_gpt.py").read_bytes()).hexdigest()
    assert facts["train_gpt.py"]["nbytes"] == 73
    assert plan.env == {"NCCL_NET": "Socket", "NUM_LAYERS": "11", "MATRIX_LR": "0.025"}
    assert plan.seed_env == {"1": {}, "2": {}, "3": {"ITERATIONS": "40"}}
    assert plan.seeds == [1, 2, 3]
    assert [round(c["val_bpb"], 8) for c in plan.claims] == [1.21924031, 1.21933761, 1.21925258]
    assert public["hardware"]["gpu_count"] == 8 and public["estimate"]["runs"] == 3
    assert public["estimate"]["total_usd"] > 0


def test_a_zip_source_and_its_refusals(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in (RECORDS / "good").iterdir():
            archive.write(path, f"records/track_10min_16mb/good/{path.name}")
    with reproduce.zip_source(buffer.getvalue()) as folder:
        assert reproduce.plan_folder(folder, {"kind": "zip"}).seeds == [1, 2, 3]
    evil = io.BytesIO()
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("../escape.py", "print(1)")
    with pytest.raises(SourceError, match="source.zip"), reproduce.zip_source(evil.getvalue()):
        pass
    with pytest.raises(SourceError, match="not a zip"), reproduce.zip_source(b"nope"):
        pass


def bare_repository(tmp_path: Path) -> tuple[Path, str]:
    """A bare repository whose one commit holds the fixture folder under records/."""
    work, bare = tmp_path / "work", tmp_path / "repo.git"
    shutil.copytree(RECORDS / "good", work / "records" / "track_10min_16mb" / "good")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-C", str(work)]
    subprocess.run(["git", "init", "-q", str(work)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "record"], check=True)
    (work / "later.txt").write_text("a later commit")
    commit = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "later"], check=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(bare)], check=True)
    return bare, commit


def test_a_git_source_at_a_commit(tmp_path: Path) -> None:
    bare, commit = bare_repository(tmp_path)
    source = GitSource(url=f"file://{bare}", commit=commit, path="records/track_10min_16mb/good")
    with reproduce.git_source(source, allow_file=True) as folder:
        plan = reproduce.plan_folder(folder, {"kind": "git"})
        assert not (folder.parents[2] / "later.txt").exists()
    assert plan.files["train_gpt.py"] == (RECORDS / "good" / "train_gpt.py").read_bytes()
    with pytest.raises(SourceError, match="source.url"), reproduce.git_source(source, allow_file=False):
        pass
    with pytest.raises(SourceError, match="source.url"), reproduce.git_source(
            GitSource(url="ext::sh -c touch% /tmp/pwned", commit=commit), allow_file=True):
        pass
    with pytest.raises(SourceError, match="source.commit"), reproduce.git_source(
            GitSource(url=f"file://{bare}", commit="0" * 40), allow_file=True):
        pass


def test_quoted_source_in_a_log_is_not_a_hyperparameter_and_seeds_run_once() -> None:
    code = {"train_gpt.py": "os.environ.get('VOCAB_SIZE')\nos.environ.get('NUM_HEADS')\n"}
    log = "class Hyperparameters:\n  vocab_size: int,\nHyperparameters:\n  num_heads: 8\nstep:1/2 x\n"
    assert reproduce.log_env([log], reproduce.code_env_names(code)) == {"NUM_HEADS": "8"}


def test_a_folder_with_two_trainers_and_no_command_is_refused_naming_them(tmp_path: Path) -> None:
    folder = tmp_path / "2026-03-29_Study"
    folder.mkdir()
    (folder / "train_gpt_hnet.py").write_text("print(1)\n")
    (folder / "train_gpt_hnet_byte.py").write_text("print(2)\n")
    shutil.copy(RECORDS / "good" / "train_seed1.log", folder / "train.log")
    with pytest.raises(SourceError, match=r"cannot tell which script runs \(train_gpt_hnet.py, train_gpt_hnet_byte.py\)"):
        reproduce.plan_folder(folder, {"kind": "path"})


def test_sub_folders_and_binary_files_are_carried_byte_equal_and_the_script_is_launched() -> None:
    folder = RECORDS / "carried"
    plan = reproduce.plan_folder(folder, {"kind": "path"})
    # Not carried: the README, submission, train log, the log under logs/, notes and the picture.
    assert sorted(plan.files) == ["helper_mod.py", "kernels/ext.cpp", "prep_data.py", "requirements.txt",
                                  "tokenizers/tok.model", "train_gpt_cuda.py"]
    for name, data in plan.files.items():
        assert data == (folder / name).read_bytes()
    assert b"\x00" in plan.files["tokenizers/tok.model"]
    # The README runs it from the repository's root: the folder's own file of that name.
    assert plan.entrypoint == "train_gpt_cuda.py" and plan.env == {"QK_GAIN": "5.0"}
    # Counted: the script, the module it imports, the C++ source it names; not the data step.
    assert plan.counted == ["helper_mod.py", "kernels/ext.cpp", "train_gpt_cuda.py"]
    facts = {f["name"]: f for f in plan.public()["files"]}
    model = (folder / "tokenizers" / "tok.model").read_bytes()
    assert facts["tokenizers/tok.model"] == {"name": "tokenizers/tok.model", "nbytes": len(model),
                                             "sha256": hashlib.sha256(model).hexdigest(),
                                             "counted": False, "text": False}
    assert facts["kernels/ext.cpp"]["counted"] and facts["kernels/ext.cpp"]["text"]


@pytest.mark.parametrize(("readme_name", "files", "entry", "note"), [
    # 2026-03-31_LegendreGPT: a data download with python3, then the trainer with python3.
    ("python_entry.md", ["train_gpt_legendre.py"], "train_gpt_legendre.py", "launches it with torchrun"),
    # 2026-03-19_smeargate_orthoinit_muonwd: the README names train_gpt.py, the folder has v5.
    ("stale_name.md", ["train_gpt_v5.py"], "train_gpt_v5.py", "only trainer-like Python file"),
    # 2026-04-05_118M_XNOR-Net: no command in the README, the runner script's torchrun line.
    ("script_only.md", ["run_cuda_xnor.sh", "train_gpt_cuda_xnor.py", "train_gpt_cuda_xnor_eggroll_lora.py"],
     "train_gpt_cuda_xnor.py", ""),
])
def test_the_entry_point_from_real_readmes(readme_name: str, files: list[str], entry: str, note: str) -> None:
    runner = b"NUM_LAYERS=10 \\\n  torchrun --standalone --nproc_per_node=8 train_gpt_cuda_xnor.py\n"
    carried = {name: runner if name.endswith(".sh") else b"print(1)\n" for name in files}
    notes: list[str] = []
    assert reproduce.entry_point(carried, readme(readme_name), notes) == entry
    assert any(note in n for n in notes) if note else notes == []


def test_counted_files_follow_imports_and_names_from_the_entry_point() -> None:
    files = {"train.py": b"import a.b as ab\nfrom c import d, e\nrunpy.run_path('f.py')\n",
             "a/b.py": b"import g\n", "a/__init__.py": b"", "c/d.py": b"", "c/e.py": b"x = 'k.cu'\n",
             "f.py": b"", "g.py": b"", "k.cu": b"", "unused.py": b"import train\n", "tok.model": b"\x00"}
    assert reproduce.counted_paths(files, "train.py") == ["a/__init__.py", "a/b.py", "c/d.py", "c/e.py",
                                                          "f.py", "g.py", "k.cu", "train.py"]


def test_links_and_limits_of_a_carried_folder(tmp_path: Path) -> None:
    folder = tmp_path / "record"
    shutil.copytree(RECORDS / "carried", folder)
    (folder / "inside.py").symlink_to(folder / "helper_mod.py")
    plan = reproduce.plan_folder(folder, {"kind": "path"})
    assert "inside.py" not in plan.files and "inside.py: a link, not followed" in plan.notes
    (folder / "secret").symlink_to("/etc")
    with pytest.raises(SourceError, match="secret is a link out of the records folder"):
        reproduce.plan_folder(folder, {"kind": "path"})
    (folder / "secret").unlink()
    for i in range(12):
        (folder / "kernels" / f"k{i}.cpp").write_text("int k;\n")
    with pytest.raises(SourceError, match="at most 16 files"):
        reproduce.plan_folder(folder, {"kind": "path"})
    for bad in ("../x.py", "/etc/x.py", "a/../b.py", ".hidden/x.py", "a//b.py"):
        with pytest.raises(ValueError, match="relative path of plain names"):
            scripts.check_carried({bad: b""})
