# Two commands set everything up: `make demo` (the main job, offline, CPU) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU build of torch that this project's machines carry; GPU users: install your own torch first
# (any build satisfying the package's range) and set TORCH_SPEC= to skip this pin.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo test test-distributed lint clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if [ -n "$(TORCH_SPEC)" ] && ! $(PY) -c "import torch" 2>/dev/null; then $(PY) -m pip install -q "$(TORCH_SPEC)"; fi
	# uv (as TRL's CI uses) resolves and installs the rest in 20 s where pip takes 50 s; torch, already there, is kept.
	# --compile-bytecode as pip does: where PYTHONDONTWRITEBYTECODE is set (CI), every process would compile
	# transformers from source again (+3 s per process, +30 s on the test suite).
	$(PY) -m pip install -q uv
	$(VENV)/bin/uv pip install -q --compile-bytecode --python $(PY) -e ".[dev,quant]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m trl_t3d.toy.demo

# -n: the tests run in worker processes (one thread each, as conftest sets), up to 4; the `accelerate launch` tests,
# which start 2 processes each, run one after another on one worker (conftest groups them).
test: install
	$(PY) -m pytest -q -p no:cacheprovider --timeout=900 -m "not deepspeed" -n auto --maxprocesses 4 --dist loadgroup

# DeepSpeed ZeRO-2/3 under `accelerate launch` with 2 CPU processes (about 2 minutes); installs DeepSpeed, which
# `make test` does not need. DDP and FSDP2 launches are part of `make test`.
test-distributed: install
	$(PY) -m pip install -q -e ".[deepspeed]"
	$(PY) -m pytest -q -p no:cacheprovider --timeout=900 -m deepspeed

lint: install
	$(VENV)/bin/ruff check trl_t3d tests examples benchmarks
	$(VENV)/bin/ruff format --check trl_t3d tests examples benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
