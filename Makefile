# Set-up for a fresh CPU machine (Python >= 3.10). `pip install torch==2.13.0` takes the local
# CPU wheel; a bare `torch` requirement would pull several GB of CUDA packages.
PY ?= python3

.PHONY: setup browser demo test lint gpu-check

setup:
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[video,dev]'
	@command -v ffprobe >/dev/null || { apt-get update -qq && apt-get install -y -qq ffmpeg >/dev/null; }

# The page's browser test drives Debian's Chromium through Playwright (skipped, with the reason, without it).
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } || true

demo: setup
	livecc demo

# pytest exits 5 when it collects nothing: that must fail, not pass.
test: setup browser
	$(PY) -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 1; fi; exit $$rc

lint:
	ruff check .

# On a GPU machine that has PyTorch: install livecc without touching its torch (and, with no package
# index there, the wheels carried in wheels/), run the GPU suite and the benchmarks, and write
# bench/results/<date>-<device>-gpu-check.md.
gpu-check:
	@if ls wheels/*.whl >/dev/null 2>&1; then $(PY) -m pip install -q --no-index --find-links wheels wheels/*.whl; fi
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m livecc.bench.gpu_check
