# make test: build a venv under the checkout from the requirement files, then
# run the whole suite. Needs only python3 (with venv) on the machine.
PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: test venv venv-run venv-bench bench clean demo deb soak chaos docs

# Two steps in one venv: venv-run has the run-time dependencies
# (requirements.txt) and the package, all `make demo` needs; venv adds the
# test and benchmark ones (requirements-dev.txt) on top.
venv-run: $(VENV)/.runtime
venv: $(VENV)/.installed

$(VENV)/.runtime: requirements.txt setup.py
	@$(PYTHON) -m venv $(VENV) || { \
	  echo "python3 -m venv failed; installing python3-venv"; \
	  apt-get update -qq && apt-get install -y -qq python3-venv && \
	  $(PYTHON) -m venv $(VENV); }
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -r requirements.txt
	$(VPY) -m pip install -q -e .
	touch $@

$(VENV)/.installed: $(VENV)/.runtime requirements-dev.txt
	$(VPY) -m pip install -q -r requirements-dev.txt
	touch $@

# The benchmarks' plot needs matplotlib (requirements-bench.txt), which
# make test does not install.
venv-bench: $(VENV)/.bench

$(VENV)/.bench: $(VENV)/.installed requirements-bench.txt
	$(VPY) -m pip install -q -r requirements-bench.txt
	touch $@

test: venv
	tests/setup-system.sh
	$(VPY) -m pytest $(PYTEST_ARGS) tests

# The generated files: the JSON Schemas in schema/ and the process-field
# tables of README.md and man/dpd-workerd.8, from diprocd/spec.py and
# diprocd/config.py (tests/test_schema.py fails when they differ).
docs: venv
	$(VPY) -m diprocd.schema --write

# The chaos suite, long (make test runs a short one): a master and three
# nodes under config churn and kill -9s, see tests/chaos/test_chaos.py.
# SEED= replays a schedule (default: a random one, printed), ROUNDS= is its
# number of events.
SEED ?=
ROUNDS ?= 600
chaos: venv
	$(VPY) -m pytest $(PYTEST_ARGS) tests/chaos --chaos-rounds=$(ROUNDS) \
	    $(if $(SEED),--seed=$(SEED))

# A master and two nodes on loopback, in the foreground; Ctrl-C stops all.
# Run-time dependencies only.
demo: venv-run
	$(VPY) demo/run.py

# The Debian package, built in a clean copy of the tree (needs debhelper and
# dh-python; tests/setup-system.sh installs them); the .deb
# lands in build/deb/.
deb:
	rm -rf build/deb && mkdir -p build/deb/diprocd
	git ls-files -z --cached --others --exclude-standard | \
	    tar --null -T - -cf - | tar -xf - -C build/deb/diprocd
	cd build/deb/diprocd && dpkg-buildpackage -us -uc -b
	@ls build/deb/*.deb

# scaling.py: dpd-workerd, supervisord and circus at N = 100, 500, 2000,
# 5000 programs (about 20 minutes on 2 cores); its table, plot and raw
# figures land in build/bench/. SCALING_ARGS= passes options, e.g.
# SCALING_ARGS="--n 100,500 --idle-seconds 10" for a short run.
SCALING_ARGS ?=
bench: venv-bench
	$(VPY) bench/worker_vs_supervisord.py
	$(VPY) bench/propagation.py
	$(VPY) bench/dpdctl.py
	$(VPY) bench/health_checks.py
	mkdir -p build/bench
	$(VPY) bench/scaling.py $(SCALING_ARGS) --markdown build/bench/scaling.md \
	    --plot build/bench/scaling.png --json build/bench/scaling.json

# Not in CI: a worker with 1000 processes and a master with 200 simulated
# nodes under 10 minutes of churn; prints the CPU/RSS/fd curve.
soak: venv
	$(VPY) bench/soak.py $(SOAK_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
