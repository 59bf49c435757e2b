"""The demo's database I/O is never torn by Ctrl-C: the interrupt waits for the block to end
(a fetch torn by KeyboardInterrupt made SQLAlchemy print a traceback; CI, 3 December)."""

from __future__ import annotations

import os
import signal

import pytest

from wxrecon.demo.procs import uninterrupted


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_an_interrupt_inside_the_block_is_raised_when_it_ends(sig: signal.Signals) -> None:
    before = signal.getsignal(sig)
    finished = False
    with pytest.raises(KeyboardInterrupt), uninterrupted():
        os.kill(os.getpid(), sig)
        finished = True  # the block ran to its end
    assert finished
    assert signal.getsignal(sig) is before  # the handler in place before is back


def test_no_interrupt_no_exception() -> None:
    with uninterrupted():
        value = 1
    assert value == 1
