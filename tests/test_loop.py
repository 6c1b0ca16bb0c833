"""The daemons' shared loop, on real pipes with a fake clock for timers."""

import logging
import os
import resource

import pytest

from diprocd import loop as loop_mod
from diprocd.loop import ErrorStorm, Loop


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_timers_fire_when_due_and_a_key_is_replaced():
    clock = Clock()
    loop = Loop(clock=clock)
    fired = []
    loop.call_at("a", 101, lambda: fired.append("a"))
    loop.call_at("b", 102, lambda: fired.append("b"))
    loop.call_at("a", 103, lambda: fired.append("a2"))  # replaces "a"
    clock.now = 102.5
    loop.turn()
    assert fired == ["b"] and loop.pending("a") == 103
    clock.now = 103
    loop.turn()
    assert fired == ["b", "a2"] and loop.pending("a") is None
    loop.close()


def test_an_error_in_a_callback_is_logged_and_the_loop_goes_on(caplog):
    clock = Clock()
    loop = Loop(clock=clock)
    read_end, write_end = os.pipe()
    fired = []

    def broken():
        os.read(read_end, 10)
        raise KeyError("bug")
    loop.add_reader(read_end, broken)
    loop.call_at("later", 100, lambda: fired.append("timer"))
    os.write(write_end, b"x")
    with caplog.at_level(logging.ERROR):
        loop.turn()
    assert fired == ["timer"] and loop.errors == 1
    assert "internal error in" in caplog.text and "KeyError" in caplog.text
    loop.close()
    os.close(read_end)
    os.close(write_end)


def test_a_storm_of_errors_ends_the_loop():
    clock = Clock()
    loop = Loop(clock=clock, log=logging.getLogger("storm"))
    loop.every_turn(lambda now: 1 / 0)
    loop.every_turn(lambda now: now)  # due at once: no wait in the test
    limit, _ = loop_mod.ERROR_STORM
    for _ in range(limit):
        loop.turn()
    with pytest.raises(ErrorStorm):
        loop.turn()
    loop.close()


def test_the_poller_takes_descriptors_past_1024():
    """select() refuses fd >= 1024; the worker holds a pidfd per process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 2400:
        pytest.skip("open-files hard limit %d is below the test's need" % hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2400), hard))
    pipes = []
    loop = Loop(clock=Clock())
    try:
        while not pipes or pipes[-1][0] < 1100:
            pipes.append(os.pipe())
        high_read, high_write = pipes[-1]
        seen = []
        loop.add_reader(high_read, lambda: seen.append(os.read(high_read, 1)))
        os.write(high_write, b"!")
        loop.turn()
        assert high_read >= 1024 and seen == [b"!"]
    finally:
        loop.close()
        for pair in pipes:
            for fd in pair:
                os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_writer_is_called_once_its_descriptor_is_writable():
    """add_writer: a full pipe is not writable; once read, it is."""
    loop = Loop(clock=Clock())
    read_end, write_end = os.pipe2(os.O_NONBLOCK)
    try:
        while True:
            try:
                os.write(write_end, b"x" * 65536)
            except BlockingIOError:
                break
        called = []
        loop.add_writer(write_end, lambda: called.append(1))
        loop.call_at("soon", 100, lambda: None)  # a turn that does not wait
        loop.turn()
        assert called == []
        while True:
            try:
                os.read(read_end, 1 << 20)
            except BlockingIOError:
                break
        loop.call_at("soon", 100, lambda: None)
        loop.turn()
        assert called == [1]
        loop.remove_writer(write_end)
        loop.call_at("soon", 100, lambda: None)
        loop.turn()
        assert called == [1]
    finally:
        os.close(read_end)
        os.close(write_end)
        loop.close()
