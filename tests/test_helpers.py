"""The test helpers' own promises that the other tests rely on."""

import pytest

from helpers import holds_within, wait_for


def test_wait_for_returns_the_true_value():
    assert wait_for(lambda: 42, what="the answer") == 42


def test_wait_for_names_a_string_on_timeout():
    with pytest.raises(AssertionError, match="waiting for the thing$"):
        wait_for(lambda: None, timeout=0.01, what="the thing")


def test_wait_for_describes_the_state_at_the_timeout():
    polls, described = [], []

    def condition():
        polls.append(1)
        return False

    def what():
        described.append(len(polls))
        return "polled %d times" % len(polls)

    with pytest.raises(AssertionError) as info:
        wait_for(condition, timeout=0.05, interval=0.005, what=what)
    assert described == [len(polls)] and len(polls) > 1
    assert str(info.value).endswith("polled %d times" % len(polls))


def test_holds_within_says_whether_the_condition_held_in_time():
    assert holds_within(lambda: True, timeout=0.01) is True
    assert holds_within(lambda: False, timeout=0.01) is False
