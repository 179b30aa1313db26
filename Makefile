# The two commands: `make demo` runs the product, `make test` runs every test.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: demo test lint bench-webhook bench-college bench-delivery bench-fuzz clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements.txt
	touch $@

demo: $(VENV)/.installed  ## the demo college on SQLite, in the console chat, as a 班主任
	$(PY) -m bot db upgrade
	$(PY) -m bot demo --skip-if-loaded
	$(PY) -m bot chat --as wangfang

test: $(VENV)/.installed  ## SQLite, then PostgreSQL + Redis (skipped, and said so, when they are absent)
	$(PY) tests/run_all.py

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

bench-webhook: $(VENV)/.installed
	$(PY) bench/webhook.py

bench-college: $(VENV)/.installed
	$(PY) bench/college.py

bench-delivery: $(VENV)/.installed
	$(PY) bench/delivery.py

bench-fuzz: $(VENV)/.installed
	$(PY) bench/fuzz.py

clean:
	rm -rf $(VENV) instance .pytest_cache
