# Set-up is part of every target: a project venv in .venv/ (created if absent, reused if present),
# torch==2.13.0 when torch is not importable, then requirements.txt.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.requirements-stamp
DEMO   := data/demo

.PHONY: venv ext test demo demo-data clean-ext bench config-docs

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

DEMO_RUN := ckpt/demo_tsl_train_demo

# The demo end to end on CPU: data (if missing) -> dataset summary -> train TSL -> eval valid
# (mAP table) -> test-split submission (--saveonly) -> offline scoring of the valid submission.
demo: venv ext demo-data
	$(PY) tools/summarize_dataset.py configs/demo_tsl_train.yaml
	@if [ -d $(DEMO_RUN) ]; then echo "make demo: removing the previous demo run $(DEMO_RUN)"; rm -rf $(DEMO_RUN); fi
	$(PY) train.py configs/demo_tsl_train.yaml --output demo --device cpu
	$(PY) eval.py configs/demo_tsl_train.yaml $(DEMO_RUN) --split valid --device cpu --out $(DEMO_RUN)/demo_valid_results.json
	$(PY) eval.py configs/demo_tsl_train.yaml $(DEMO_RUN) --split test --device cpu --saveonly --out $(DEMO_RUN)/demo_test_submission.json
	$(PY) tools/score_submission.py $(DEMO)/annotations.json $(DEMO_RUN)/demo_valid_results.json --task sound_localisation --split valid

# docs/config.md: the table of every config key, generated from libs/config/schema.py.
config-docs: venv
	$(PY) -c "from libs.config import describe_schema; open('docs/config.md', 'w').write('# Configuration keys\n\nGenerated from \`libs/config/schema.py\` by \`make config-docs\`; \`tests/config/test_config_docs.py\` checks it is current.\n\n' + describe_schema())"

bench: venv ext
	$(PY) benchmarks/bench_nms.py --quick

clean-ext:
	rm -rf build libs/ops/*.so
