# make demo : set up (once) and run the main job.   make test : set up (once) and run the tests.
# Set-up installs the CPU build of torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.qpolicy-installed
SHARED := $(abspath ../shared)

# Data and weights resolve through QPOLICY_HOME; point it at ../shared when that exists and nothing else is set.
ifeq ($(strip $(QPOLICY_HOME)),)
ifneq ($(wildcard $(SHARED)/models),)
export QPOLICY_HOME := $(SHARED)
endif
endif
export OMP_NUM_THREADS ?= 2

.PHONY: setup demo test test-slow bench bench-ptq bench-qat bench-overhead bench-search bench-mpq bench-export lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/qpolicy inspect --model resnet20
	$(VENV)/bin/qpolicy evaluate --model resnet20
	$(VENV)/bin/qpolicy analyze --model resnet20 --metric te -o runs/demo/te.json
	$(VENV)/bin/qpolicy analyze --model resnet20 --metric hessian -o runs/demo/hessian.json
	$(VENV)/bin/qpolicy analyze --model resnet20 --metric fisher -o runs/demo/fisher.json
	$(VENV)/bin/qpolicy search runs/demo/fisher.json --budget bitops=0.2582 -o runs/demo/policy.json
	@echo "== searched policy (fisher + ilp) at the BitOPs of uniform W4A4 =="
	$(VENV)/bin/qpolicy evaluate --model resnet20 --policy runs/demo/policy.json -o runs/demo/eval_searched.json
	@echo "== uniform W4A4 (first/last 8 bits), the same BitOPs =="
	$(VENV)/bin/qpolicy evaluate --model resnet20 --uniform w4a4 -o runs/demo/eval_uniform.json
	$(VENV)/bin/qpolicy pareto runs/demo/hessian.json --bitops 0.15:0.5:5 --evaluate --limit 2000 -o runs/demo/front.json
	$(VENV)/bin/qpolicy report runs/demo -o runs/demo/report.html
	$(VENV)/bin/qpolicy export --model resnet20 --policy runs/demo/policy.json -o runs/demo/policy.onnx --verify

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

bench: bench-ptq bench-overhead bench-qat bench-search bench-export

bench-ptq: $(STAMP)
	$(PY) benchmarks/uniform_ptq.py

bench-overhead: $(STAMP)
	$(PY) benchmarks/overhead.py

bench-qat: $(STAMP)
	$(PY) benchmarks/qat_w3a4.py

bench-search: $(STAMP)
	$(PY) benchmarks/search_speed.py
	$(PY) benchmarks/search_quality.py
	$(PY) benchmarks/search_claims.py
	$(PY) benchmarks/search_qat.py

# the full comparison (3 seeds, 3 epochs on 50,000 images, 1 QAT epoch each) takes many hours on 2 CPU cores;
# MPQ_ARGS scales it down, e.g. the committed run: MPQ_ARGS="--epochs 2 --train-images 8192 --shapley-samples 4
# --finetune-images 2560 --threads 1 --jobs 2 --scaling 1,2" (about 80 minutes on 2 cores)
bench-export: $(STAMP)
	$(PY) benchmarks/export_onnx.py

bench-mpq: $(STAMP)
	$(PY) benchmarks/mpq_compare.py $(MPQ_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
