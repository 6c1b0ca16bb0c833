"""The chaos suite: a master and three nodes under a seeded schedule of
config churn and kill -9s (see test_chaos.py). A package, so that its
conftest does not take the place of tests/conftest.py as the module
``conftest`` that other tests import from."""
