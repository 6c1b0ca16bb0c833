# make test: build a venv under the checkout from the requirement files, then
# run the whole suite. Needs only python3 (with venv) on the machine.
PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: test venv bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt setup.py
	@$(PYTHON) -m venv $(VENV) || { \
	  echo "python3 -m venv failed; installing python3-venv"; \
	  apt-get install -y python3-venv && $(PYTHON) -m venv $(VENV); }
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -r requirements-dev.txt
	$(VPY) -m pip install -q -e .
	touch $@

test: venv
	tests/setup-system.sh
	$(VPY) -m pytest $(PYTEST_ARGS) tests

bench: venv
	$(VPY) bench/worker_vs_supervisord.py

clean:
	rm -rf $(VENV) build *.egg-info
