from decimal import Decimal

from services.dispatcher.throttle import RateLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


async def test_zero_rate_never_waits() -> None:
    clock = FakeClock()
    limiter = RateLimiter(Decimal(0), clock=clock)
    for _ in range(1000):
        await limiter.acquire(5)
    assert clock.slept == []


async def test_one_per_second_spaces_every_message() -> None:
    clock = FakeClock()
    limiter = RateLimiter(Decimal(1), clock=clock)
    times = []
    for _ in range(4):
        await limiter.acquire()
        times.append(clock.now)
    assert times == [1000.0, 1001.0, 1002.0, 1003.0]


async def test_segments_cost_their_full_share() -> None:
    clock = FakeClock()
    limiter = RateLimiter(Decimal(1), clock=clock)
    await limiter.acquire(3)  # a 3-segment SMS goes at once...
    start = clock.now
    await limiter.acquire(1)  # ...and the next waits for all three segments
    assert clock.now - start == 3.0


async def test_burst_of_one_second_then_steady_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(Decimal(10), clock=clock)
    for _ in range(10):
        await limiter.acquire()
    assert clock.slept == []  # one second's worth goes at once
    await limiter.acquire()
    assert len(clock.slept) == 1 and abs(clock.slept[0] - 0.1) < 1e-9
    # After 20 units, 2 seconds of schedule are booked, less the one-second bucket.
    for _ in range(9):
        await limiter.acquire()
    assert abs(clock.now - 1001.0) < 1e-9


async def test_idle_time_does_not_pile_up_into_a_bigger_burst() -> None:
    clock = FakeClock()
    limiter = RateLimiter(Decimal(2), clock=clock)
    clock.now += 3600
    for _ in range(2):
        await limiter.acquire()
    assert clock.slept == []
    await limiter.acquire()
    assert clock.slept == [0.5]


async def test_fractional_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(Decimal("0.5"), clock=clock)
    await limiter.acquire()
    await limiter.acquire()
    assert clock.slept == [2.0]


async def test_concurrent_senders_get_distinct_slots() -> None:
    clock = FakeClock()
    limiter = RateLimiter(Decimal(1), clock=clock)
    waits = [limiter.reserve(1) for _ in range(3)]
    assert waits == [0.0, 1.0, 2.0]
