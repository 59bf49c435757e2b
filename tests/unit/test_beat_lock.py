"""The beat leader decision (pure) and its use of a lock, with a fake clock and a fake lock."""

from __future__ import annotations

import pytest

from wxrecon.beat import Action, Leadership, decide, leads

TTL = 30.0


@pytest.mark.parametrize(
    ("holder", "renewed_at", "now", "action"),
    [
        (None, None, 0.0, Action.ACQUIRE),
        (None, 5.0, 6.0, Action.ACQUIRE),  # our key expired under us: take it again
        ("other", None, 0.0, Action.STANDBY),
        ("other", 5.0, 6.0, Action.STANDBY),  # someone took it: we are not the leader
        ("me", None, 0.0, Action.RENEW),
        ("me", 0.0, 9.9, Action.KEEP),
        ("me", 0.0, 10.0, Action.RENEW),
    ],
)
def test_decide(holder, renewed_at, now, action) -> None:  # type: ignore[no-untyped-def]
    assert decide(me="me", holder=holder, now=now, renewed_at=renewed_at, ttl=TTL) is action


def test_leads_stops_before_the_key_can_expire() -> None:
    assert not leads(now=0.0, renewed_at=None, ttl=TTL)
    assert leads(now=19.9, renewed_at=0.0, ttl=TTL)
    assert not leads(now=20.0, renewed_at=0.0, ttl=TTL)


class FakeLock:
    """A key with an expiry on the fake clock, shared by several beats."""

    def __init__(self, store: dict[str, object], me: str, clock: list[float]) -> None:
        self.store, self.me, self.clock = store, me, clock
        self.fail = False

    def _live(self) -> str | None:
        if self.fail:
            import redis

            raise redis.ConnectionError("down")
        holder, until = self.store.get("key", (None, 0.0))  # type: ignore[misc]
        return holder if self.clock[0] < until else None  # type: ignore[return-value]

    def holder(self) -> str | None:
        return self._live()

    def acquire(self) -> bool:
        if self._live() is not None:
            return False
        self.store["key"] = (self.me, self.clock[0] + TTL)
        return True

    def renew(self) -> bool:
        if self._live() != self.me:
            return False
        self.store["key"] = (self.me, self.clock[0] + TTL)
        return True


def test_one_leader_and_a_standby_takes_over_within_the_bound() -> None:
    clock = [0.0]
    store: dict[str, object] = {}
    a = Leadership(FakeLock(store, "a", clock), TTL, clock=lambda: clock[0])  # type: ignore[arg-type]
    b = Leadership(FakeLock(store, "b", clock), TTL, clock=lambda: clock[0])  # type: ignore[arg-type]
    # both tick every TTL/3, as LeaderScheduler.tick asks: only one ever leads
    for _ in range(12):
        assert [a.check(), b.check()] == [True, False]
        clock[0] += TTL / 3
    died = clock[0]  # a dies: it ticks no more; b takes over once a's key expires
    while not b.check():
        clock[0] += TTL / 3
    assert clock[0] - died <= TTL + TTL / 3


def test_a_leader_that_cannot_renew_stops_sending_before_its_key_expires() -> None:
    clock = [0.0]
    lock = FakeLock({}, "a", clock)
    a = Leadership(lock, TTL, clock=lambda: clock[0])  # type: ignore[arg-type]
    assert a.check()
    lock.fail = True  # Redis unreachable from this beat
    clock[0] = TTL / 3
    assert a.check()  # still inside two thirds of the TTL
    clock[0] = TTL * 2 / 3
    assert not a.check()
    assert clock[0] < TTL  # ... and the key, which nobody renewed, lasts until TTL


@pytest.mark.parametrize("value", ["0.1", "0", "-1", "601", "soon"])
def test_the_lock_ttl_setting_is_bounded(value: str) -> None:
    from pydantic import ValidationError

    from wxrecon.config import Settings

    with pytest.raises(ValidationError):
        Settings(beat_lock_ttl=value)  # type: ignore[arg-type]


def test_the_lock_ttl_takes_a_duration() -> None:
    from wxrecon.config import Settings

    assert Settings(beat_lock_ttl="2s").beat_lock_ttl == 2.0  # type: ignore[arg-type]
    assert Settings().beat_lock_ttl == 30.0
