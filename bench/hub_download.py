"""MB/s of the dataset download on loopback: the urllib client `trainer/hub.py` used to be, and
huggingface_hub's `hf_hub_download` that it uses now, against the same local stand-in of the
Hub (tests/trainer/hub_standin.py), on the same files.

    .venv/bin/python bench/hub_download.py [--files 4] [--mb 64] [--repeats 3] [--jobs 8] [--delay-s 0]

Each client downloads every file once per repeat into a fresh folder (huggingface_hub into a
fresh cache: nothing is reused); the figure is total bytes / wall time, the best of the repeats.
Loopback measures each client's own cost (Python-side copying, hashing, syscalls), not the
network: on a pod the Hub's CDN and Xet decide most of it. Record figures in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.trainer.hub_standin import REPO, HubStandIn  # noqa: E402

CHUNK_BYTES = 1 << 20  # what the urllib client read per call


def urllib_get(url: str, dest: Path) -> None:
    """The former client's transfer: one GET, 1 MiB reads into a file, size checked."""
    with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as out:
        expected = int(response.headers["Content-Length"])
        while chunk := response.read(CHUNK_BYTES):
            out.write(chunk)
    if dest.stat().st_size != expected:
        raise RuntimeError(f"{dest}: short download")


def hub_get(hub: HubStandIn, remote: str, cache: Path) -> None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()
    hf_hub_download(REPO, remote, repo_type="dataset", endpoint=hub.url, cache_dir=cache)


def timed(run, names: list[str], size: int, repeats: int) -> float:
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        for name in names:
            run(name)
        best = max(best, len(names) * size / (time.perf_counter() - start) / 1e6)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--mb", type=int, default=64, help="size of each file in MB (10^6 bytes)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=8, help="downloads at once in the last row")
    parser.add_argument("--delay-s", type=float, default=0.0,
                        help="the stand-in waits this long before each file's body (a slow link)")
    args = parser.parse_args()
    size = args.mb * 1_000_000
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        names = [f"datasets/datasets/bench/fineweb_train_{i:06d}.bin" for i in range(args.files)]
        for name in names:
            (root / "remote" / name).parent.mkdir(parents=True, exist_ok=True)
            (root / "remote" / name).write_bytes(os.urandom(size))
        hub = HubStandIn(root / "remote", delay_s=args.delay_s)
        hub.start()
        try:
            for name in names:  # the stand-in hashes each file once; do it before timing
                urllib.request.urlopen(urllib.request.Request(
                    f"{hub.url}/datasets/{REPO}/resolve/main/{name}", method="HEAD")).close()
            out = root / "out"

            def fresh() -> None:
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir()

            def old(name: str) -> None:
                urllib_get(f"{hub.url}/datasets/{REPO}/resolve/main/{name}", out / Path(name).name)

            def new(name: str) -> None:
                hub_get(hub, name, out / "cache")

            def together(name: str) -> None:
                # The whole set at `--jobs` at a time, as `data fetch` does: started by the first name.
                if name == names[0]:
                    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
                        list(pool.map(new, names))

            results = {}
            for label, run in (("urllib (former trainer/hub.py)", old), ("huggingface_hub hf_hub_download", new),
                               (f"hf_hub_download, {args.jobs} at a time", together)):
                def each(name: str, run=run) -> None:
                    if name == names[0]:
                        fresh()
                    run(name)
                results[label] = timed(each, names, size, args.repeats)
        finally:
            hub.stop()
    import huggingface_hub

    print(f"{args.files} files x {args.mb} MB on loopback, {args.delay_s} s before each body, "
          f"best of {args.repeats}; "
          f"Python {platform.python_version()}, huggingface_hub {huggingface_hub.__version__}, "
          f"{platform.machine()} {os.cpu_count()} CPUs")
    for label, mbps in results.items():
        print(f"  {label:<36} {mbps:8.1f} MB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
