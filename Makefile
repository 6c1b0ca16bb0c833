# make test: build a venv under the checkout from the requirement files, then
# run the whole suite. Needs only python3 (with venv) on the machine.
PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: test test-fork-path venv venv-run venv-bench bench clean demo deb soak \
    chaos docs dpd-exec

# dpd-exec, the C program the worker starts processes with (lib/dpd-exec.c,
# diprocd/dpdexec.py), built into the venv, where the worker looks for it
# (sys.prefix/lib/diprocd/); debian/rules builds it with DPD_EXEC=lib/dpd-exec
# and the tests (tests/conftest.py) into a folder of their own.
DPD_EXEC ?= $(VENV)/lib/diprocd/dpd-exec
CFLAGS ?= -O2
dpd-exec: $(DPD_EXEC)

$(DPD_EXEC): lib/dpd-exec.c
	@command -v $(CC) >/dev/null 2>&1 || { \
	  echo "no C compiler; installing gcc and libc6-dev"; \
	  apt-get update -qq && apt-get install -y -qq gcc libc6-dev; }
	@mkdir -p $(dir $@)
	$(CC) -std=c99 -Wall -Wextra $(CPPFLAGS) $(CFLAGS) $(LDFLAGS) \
	    -o $@ lib/dpd-exec.c

# Two steps in one venv: venv-run has the run-time dependencies
# (requirements.txt) and the package, all `make demo` needs; venv adds the
# test and benchmark ones (requirements-dev.txt) on top.
venv-run: $(VENV)/.runtime $(DPD_EXEC)
venv: $(VENV)/.installed $(DPD_EXEC)

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

# The tests of starting processes again on spawn.py's fork path, the one a
# worker takes without dpd-exec (make test runs them through dpd-exec;
# tests/test_dpdexec.py runs its starts on both paths anyway).
FORK_PATH_TESTS = tests/test_process.py tests/test_worker.py \
    tests/test_pidfile.py tests/test_faults.py tests/test_file_safety.py \
    tests/test_pid_file_move.py tests/test_scale.py tests/test_dpdexec.py \
    tests/test_limits.py tests/test_cgroup.py tests/test_health.py
test-fork-path: venv
	tests/setup-system.sh
	DIPROCD_EXEC=none $(VPY) -m pytest $(PYTEST_ARGS) $(FORK_PATH_TESTS)

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

# The Debian package, built in a clean copy of the tree (needs debhelper,
# dh-python and gcc; tests/setup-system.sh installs them); the .deb (of
# this machine's architecture: dpd-exec is compiled) lands in build/deb/.
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
