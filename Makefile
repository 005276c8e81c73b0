# Set-up is part of every target: a project venv in .venv/ (created if absent, reused if present),
# torch==2.13.0 when torch is not importable, then requirements.txt.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.requirements-stamp
DEMO   := data/demo

.PHONY: venv ext test demo demo-data clean-ext bench

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): requirements.txt | $(PY)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -r requirements.txt
	@touch $(STAMP)

venv: $(STAMP)

# C++ (and, where a CUDA toolkit is present, CUDA) NMS extension, built in place.
ext: venv
	$(PY) setup.py build_ext --inplace

test: venv ext
	$(PY) -m pytest -q tests

demo-data: venv
	$(PY) tools/make_demo_data.py --out $(DEMO)

demo: venv ext demo-data
	$(PY) tools/summarize_dataset.py configs/demo_tsl_train.yaml

bench: venv ext
	$(PY) benchmarks/bench_nms.py --quick

clean-ext:
	rm -rf build libs/utils/*.so
