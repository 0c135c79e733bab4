# bdiff: the two commands of the README. Each creates .venv (Python >= 3.12) and installs
# bdiff with the versions pinned in constraints.txt (those of the lent GPU image).
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean

$(STAMP): setup.py constraints.txt
	@set -e; boot=$$(.ci/find_python.sh); echo "using $$boot"; \
	  "$$boot" -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@echo "installing bdiff and its pinned dependencies into $(VENV) (about a minute with a warm pip cache)"
	$(PY) -m pip install --progress-bar on -c constraints.txt -e ".[dev,hf]"
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m experiments.demo

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --durations=15 tests

clean:
	rm -rf $(VENV) runs
