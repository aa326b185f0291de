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

.PHONY: setup demo test test-slow bench bench-ptq bench-qat bench-overhead bench-search bench-mpq bench-export \
	bench-robust bench-qfa bench-attacks bench-digits resnet8 resnet8-defenses heldout-models lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# The main job: search a ResNet-20 policy at the weight size of uniform W3 (8-bit activations) on resnet20-heldout (trained
# here without the validation images, shipped with qpolicy), every choice made on the validation split; check it
# against uniform W3A8 on the 10,000 test images, export it to ONNX and verify it in onnxruntime, and write the report;
# each step's time is listed at the end (runs/demo/steps.txt).
comma := ,
DEMO := runs/demo
QP := $(VENV)/bin/qpolicy
define step
	@echo "== $(1) =="
	@t=$$(date +%s%N); $(2); s=$$?; \
	  echo "$$(( ($$(date +%s%N) - t) / 1000000 )) ms  $(1)" >> $(DEMO)/steps.txt; exit $$s
endef
demo: $(STAMP)
	rm -rf $(DEMO) && mkdir -p $(DEMO)
	$(call step,1/6 the model: ResNet-20 trained here on the 45$(comma)000 training images outside the validation \
	  split (shipped with qpolicy),$(QP) inspect --model resnet20-heldout)
	$(call step,2/6 search: the weight size of uniform W3 (0.3775 of W8) with 8-bit activations; every choice on \
	  the validation split (images the model never saw),$(QP) search --model resnet20-heldout --budget size=0.3775 \
	  --act-bits 8 --tables-dir $(DEMO) -o $(DEMO)/policy.json)
	$(call step,3/6 top-1 of the searched policy on the 10$(comma)000 test images,$(QP) evaluate --model resnet20-heldout \
	  --policy $(DEMO)/policy.json -o $(DEMO)/eval_searched.json)
	$(call step,4/6 top-1 of uniform W3A8 (first/last 8 bits) on the same images: the same size,$(QP) evaluate \
	  --model resnet20-heldout --uniform w3a8 -o $(DEMO)/eval_uniform.json)
	$(call step,5/6 ONNX export of the searched policy; onnxruntime against PyTorch on 2000 test images,$(QP) \
	  export --model resnet20-heldout --policy $(DEMO)/policy.json -o $(DEMO)/policy.onnx --verify --limit 2000)
	$(call step,6/6 summary and the HTML report,$(QP) report $(DEMO) -o $(DEMO)/report.html)
	@echo "== time per step (ms) ==" && cat $(DEMO)/steps.txt

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" --durations=15

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow --durations=15

bench: bench-ptq bench-digits bench-overhead bench-qat bench-search bench-export

bench-ptq: $(STAMP)
	$(PY) benchmarks/uniform_ptq.py

bench-digits: $(STAMP)
	$(PY) benchmarks/digits.py

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
# certified robustness (issue 11): noise training (cached), the float certificate, IRS vs full, ARQ vs baselines;
# about 90 minutes on 2 CPU cores
bench-robust: $(STAMP)
	$(QP) train-noise --model resnet20 --sigma 0.25 --resume 2>/dev/null || $(QP) train-noise --model resnet20 --sigma 0.25
	$(PY) benchmarks/certify_sanity.py --resume
	$(PY) benchmarks/irs_vs_full.py
	$(PY) benchmarks/arq_compare.py

# KURE and QFA (issue 12), reduced scale on 2 CPU cores (about 60 minutes)
# The MLPerf Tiny ResNet-8 has no public weights: train it once (12 epochs, about 15 min on 2 cores), cached in
# $$QPOLICY_TRAINED (default ~/.cache/qpolicy/trained). Then the train-based defenses and PixelDefend's PixelCNN
# (fine-tuning on 10,000 training images, 2 epochs each).
R8_DEF := --train-limit 10000 --epochs 2
resnet8: $(STAMP)
	$(QP) train --model resnet8 --epochs 12 --resume 2>/dev/null || $(QP) train --model resnet8 --epochs 12

resnet8-defenses: resnet8
	for d in pgd_at distillation ensemble_at sinkhorn_at; do \
	  $(QP) train --model resnet8 --defense $$d $(R8_DEF) --resume 2>/dev/null || \
	  $(QP) train --model resnet8 --defense $$d $(R8_DEF) || exit 1; done
	$(QP) train --model resnet8 --defense pixeldefend $(R8_DEF) --optimizer adam --lr 0.002 --resume 2>/dev/null || \
	  $(QP) train --model resnet8 --defense pixeldefend $(R8_DEF) --optimizer adam --lr 0.002

# David and Goliath: attacks x QNNs x defenses (resumable run folders in runs/bench/).
bench-attacks: resnet8-defenses
	$(PY) benchmarks/attack_suite.py --config benchmarks/configs/robustness_resnet8.json --name robustness_resnet8
	$(PY) benchmarks/attack_suite.py --config benchmarks/configs/robustness_resnet20.json --name robustness_resnet20
	$(PY) benchmarks/attack_suite.py --config benchmarks/configs/robustness_resnet8_findings.json \
	  --name robustness_resnet8_findings
	$(PY) benchmarks/attack_suite.py --config benchmarks/configs/robustness_resnet20_findings.json \
	  --name robustness_resnet20_findings

# Held-out ResNet-20/32 (issue 22): trained here on the 45,000 training images outside the validation split,
# distilled from the published weights on those images only (resumable; 100 epochs in bfloat16: 1.3 h for ResNet-20 on
# 2 cores of an AMD EPYC with AVX-512 BF16, 1.7 h for ResNet-32; use HELDOUT_PRECISION=fp32 on CPUs without BF16).
# Weights go to $$QPOLICY_TRAINED/resnetNN-heldout; benchmarks/heldout_models.py --ship puts them in the package.
HELDOUT_EPOCHS ?= 100
HELDOUT_PRECISION ?= bf16
heldout-models: $(STAMP)
	for d in 20 32; do \
	  $(QP) train --model resnet$$d-heldout --teacher resnet$$d --epochs $(HELDOUT_EPOCHS) \
	    --precision $(HELDOUT_PRECISION) --resume 2>/dev/null || \
	  $(QP) train --model resnet$$d-heldout --teacher resnet$$d --epochs $(HELDOUT_EPOCHS) \
	    --precision $(HELDOUT_PRECISION) || exit 1; done

bench-qfa: $(STAMP)
	$(PY) benchmarks/kure_compare.py
	$(PY) benchmarks/qfa_compare.py

bench-export: $(STAMP)
	$(PY) benchmarks/export_onnx.py

bench-mpq: $(STAMP)
	$(PY) benchmarks/mpq_compare.py $(MPQ_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
