# patchcore-rt developer entry points. `make demo` runs the main job end to end on the embedded
# synthetic dataset (no download); `make test` runs the test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BACKBONE ?= effnet-lite0
DATA ?=
# WEIGHTS, CORESET, PRESET: passed on only when set, so the preset's own values hold otherwise
# (a fixed CORESET here used to override the default preset's 1% bank).
WEIGHTS ?=
CORESET ?=
PRESET ?=
FIT_ARGS = $(if $(WEIGHTS),--weights $(WEIGHTS)) $(if $(CORESET),--coreset $(CORESET)) $(if $(PRESET),--preset $(PRESET))
OUT ?= models/$(BACKBONE)

.PHONY: venv install install-genicam check-bare-install demo test docs test-gpu gpu-pack eval export parity bench bench-quick clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

venv: $(PY)

# What installs from wheels alone on a bare machine (python3 and git, no system packages): every extra
# but genicam. scripts/check_bare_install.py (run by .ci/run) proves it with pip's resolver.
EXTRAS ?= fit,test,scale,serve,docs,openvino,line

install: $(VENV)/.installed

$(VENV)/.installed: $(PY) pyproject.toml
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

# Industrial cameras (genicam:// sources): PyGObject has no wheel and builds from source against
# Debian/Ubuntu's libgirepository1.0-dev libcairo2-dev pkg-config gcc; Aravis itself is
# gir1.2-aravis-0.8 (and aravis-tools for the tests' fake camera). Install those first (docs/cameras.md).
install-genicam: install
	@command -v pkg-config >/dev/null 2>&1 && pkg-config --exists cairo gobject-introspection-1.0 || { \
	  echo "make install-genicam: PyGObject builds against system packages that are missing here; first:" >&2; \
	  echo "  apt-get install --no-install-recommends gir1.2-aravis-0.8 aravis-tools libgirepository1.0-dev libcairo2-dev pkg-config gcc" >&2; \
	  exit 2; }
	$(PY) -m pip install --quiet -e '.[genicam]'

# Proves the bare-machine path without installing: pip resolves `make install`'s extras to wheels only.
check-bare-install: $(PY)
	$(PY) scripts/check_bare_install.py

demo: install
	$(PY) -m patchcore synth --dest datasets/synthetic
	$(PY) -m patchcore eval --data datasets/synthetic/brick --backbone $(BACKBONE) --out results/demo
	$(PY) -m patchcore export --backbone $(BACKBONE) --data datasets/synthetic/brick --out models/demo
	$(VENV)/bin/patchcore-rt predict models/demo datasets/synthetic/brick/test --recursive --overlays results/demo/runtime > results/demo/runtime.jsonl
	@echo; cat results/demo/summary.md; echo; echo "runtime scores: results/demo/runtime.jsonl, overlays: results/demo/brick/$(BACKBONE)/overlays"

test: install
	$(PY) -m pytest -q -rs -p no:cacheprovider

# the documentation site (docs/, mkdocs.yml) -> build/site; --strict: a broken link or a page left out fails
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

test-gpu: install
	$(PY) -m pytest -q -m "gpu or tensorrt"

# make gpu-pack [GPU_PACK_ARGS="--cache DIR --no-download"]: .gpu-pack/ (git-ignored) with what a bare
# CUDA 13 GPU box lacks, split into device calls of under 60 MiB, and their run.sh (README, GPU checks)
gpu-pack: $(PY)
	$(PY) scripts/gpu_pack.py $(GPU_PACK_ARGS)

# make eval DATA=../shared/datasets/mvtec_ad/bottle BACKBONE=effnet-lite0
eval: install
	$(PY) -m patchcore eval --data $(or $(DATA),datasets/synthetic/brick) --backbone $(BACKBONE) $(FIT_ARGS) --out results

# make export BACKBONE=wrn50 [DATA=<class folder>] [WEIGHTS=<file|random>] [CORESET=0.1] [PRESET=paper]
export: install
	$(PY) -m patchcore export --backbone $(BACKBONE) $(if $(DATA),--data $(DATA)) $(FIT_ARGS) --out $(OUT)

# make parity OUT=models/effnet-lite0 DATA=../shared/datasets/mvtec_ad/bottle
parity: install
	$(PY) -m patchcore parity $(OUT) $(or $(DATA),datasets/synthetic/brick) --report results/parity-$(BACKBONE).json

bench: install
	$(PY) benchmarks/run.py $(BENCH_ARGS)

bench-quick: install
	$(PY) benchmarks/run.py --quick

clean:
	rm -rf results build *.egg-info
