"""Options of the chaos suite, and its seed shown wherever a run is read.

``--seed N`` replays a schedule (default: a random seed, printed);
``--chaos-rounds N`` is the number of events (default: the short run of
``make test``). The timeout of a chaos test grows with the rounds. Each
run's figures are printed at the end of pytest's output, and a failed
run's report carries the command that replays it.
"""

import random

import pytest

SHORT_ROUNDS = 40
# Seconds a chaos test may take: the cluster's start and convergence, and
# at most this much a round (pauses, respawns, kills and checks).
BASE_TIMEOUT = 120
ROUND_TIMEOUT = 2.0

_RUNS = []  # (nodeid, the figures of the run) for the terminal summary


def pytest_addoption(parser):
    group = parser.getgroup("chaos", "the chaos suite (tests/chaos)")
    group.addoption("--seed", type=int, default=None,
                    help="seed of the chaos schedule (default: random, "
                         "printed)")
    group.addoption("--chaos-rounds", type=int, default=SHORT_ROUNDS,
                    help="events in the chaos schedule (default: %(default)s)")


def rounds_of(config):
    return config.getoption("--chaos-rounds", default=SHORT_ROUNDS)


def pytest_collection_modifyitems(config, items):
    timeout = BASE_TIMEOUT + ROUND_TIMEOUT * rounds_of(config)
    for item in items:
        if item.get_closest_marker("chaos"):
            item.add_marker(pytest.mark.timeout(timeout), append=False)


@pytest.fixture
def chaos_seed(request):
    seed = request.config.getoption("--seed", default=None)
    if seed is None:
        seed = random.SystemRandom().randrange(2 ** 32)
    request.node.chaos_seed = seed
    print("chaos seed %d (replay: %s)" % (seed, replay(request.config, seed)))
    return seed


@pytest.fixture
def chaos_rounds(request):
    return rounds_of(request.config)


@pytest.fixture
def chaos_figures(request):
    """A dict the test fills with its figures, printed at the end."""
    figures = {}
    yield figures
    _RUNS.append((request.node.nodeid, figures))


def replay(config, seed):
    return "make chaos SEED=%d ROUNDS=%d" % (seed, rounds_of(config))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    seed = getattr(item, "chaos_seed", None)
    if seed is not None and report.failed:
        report.sections.append(("chaos seed", "seed %d; replay: %s" % (
            seed, replay(item.config, seed))))
    return report


def pytest_terminal_summary(terminalreporter):
    for nodeid, figures in _RUNS:
        terminalreporter.write_sep("-", "chaos: " + nodeid)
        for key, value in figures.items():
            terminalreporter.write_line("%s: %s" % (key, value))
