"""What validating a GGUF costs: clm_local.gguf.check (header reader) against gguf-py's GGUFReader.

`clm_local.load` and `clm-local info` read every file's header before llama.cpp sees it. This
prints, for one file (default: the embedded default model), the time and the peak memory of each
way of reading it, each in a fresh process, side by side in one run, and their ratio.

    .venv/bin/python benchmarks/gguf_header.py [FILE.gguf] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

READERS = {
    "gguf_check": "from clm_local.gguf.check import check_gguf as read",
    "GGUFReader": "from gguf import GGUFReader as read",
}
CHILD = """
import json, resource, sys, time
{import_line}
started = time.perf_counter()
read(sys.argv[1])
seconds = time.perf_counter() - started
peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"seconds": seconds, "peak_mib": peak_mib}}))
"""


def measure(reader: str, path: str) -> dict[str, float]:
    code = CHILD.format(import_line=READERS[reader])
    result = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("file", nargs="?")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if args.file is None:
        from clm_local.default_model import default_model_path

        args.file = str(default_model_path())
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in READERS}
    for _ in range(args.repeat):  # interleaved, so a busy machine slows both alike
        for name in READERS:
            runs[name].append(measure(name, args.file))
    medians = {
        name: {key: statistics.median(run[key] for run in results) for key in ("seconds", "peak_mib")}
        for name, results in runs.items()
    }
    for name, median in medians.items():
        print(f"{name:<11} {median['seconds'] * 1000:8.1f} ms   peak RSS {median['peak_mib']:6.1f} MiB")
    ours, theirs = medians["gguf_check"], medians["GGUFReader"]
    print(
        f"gguf_check / GGUFReader: time x{ours['seconds'] / theirs['seconds']:.3f}, "
        f"peak RSS x{ours['peak_mib'] / theirs['peak_mib']:.2f} (median of {args.repeat}, {args.file})"
    )


if __name__ == "__main__":
    main()
