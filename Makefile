# Set-up for a fresh CPU machine (Python >= 3.10). `pip install torch==2.13.0` takes the local
# CPU wheel; a bare `torch` requirement would pull several GB of CUDA packages.
PY ?= python3

.PHONY: setup browser demo test lint gpu-check gpu-wheels

setup:
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[video,dev]'
	@command -v ffprobe >/dev/null || { apt-get update -qq && apt-get install -y -qq ffmpeg >/dev/null; }
	@command -v espeak-ng >/dev/null || { apt-get update -qq && apt-get install -y -qq espeak-ng >/dev/null; }

# The page's browser test drives Debian's Chromium through Playwright (skipped, with the reason, without it).
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } || true

demo: setup
	livecc demo

# One pytest worker per core (the Ray tests share one worker and its local cluster), the ten
# slowest tests named at the end. pytest exits 5 when it collects nothing: that must fail, not pass.
test: setup browser
	$(PY) -m pytest -q -n auto --dist loadgroup --durations=10; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 1; fi; exit $$rc

lint:
	ruff check .

# On a GPU machine that has PyTorch and no package index: the wheels carried in wheels/ go to
# .gpu-site (the image's own packages untouched), then the tier runs, rewriting its report in OUT
# after every item. `make gpu-check OUT=$OUT` in a lease; TIER=full, ARGS="--budget-s 3000".
OUT ?= bench/results
TIER ?= quick
gpu-check:
	@if ls wheels/*.whl >/dev/null 2>&1; then $(PY) -m pip install -q --no-index --no-deps --no-compile --upgrade \
		--target .gpu-site wheels/*.whl; fi
	PYTHONPATH=$(CURDIR)/.gpu-site:$(CURDIR) $(PY) -m livecc.bench.gpu_check --tier $(TIER) --out $(OUT) $(ARGS)

# On a machine with the package index: the wheels the GPU image lacks, into wheels/ (SET=full for all).
SET ?= quick
gpu-wheels:
	$(PY) -m livecc.bench.gpu_wheels --set $(SET) --dest wheels
