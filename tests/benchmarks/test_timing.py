"""The interleaved timer: every call runs as often as asked, in alternating bursts."""

from benchmarks.timing import interleaved_median_ms


def test_calls_alternate_in_bursts_and_each_gets_a_figure():
    order: list[str] = []
    calls = {name: (lambda name=name: order.append(name)) for name in ("a", "b")}
    times = interleaved_median_ms(calls, repeats=30, burst=10)
    assert set(times) == {"a", "b"} and all(t >= 0 for t in times.values())
    # One warm-up each, then three rounds of ten a's followed by ten b's.
    assert order[:2] == ["a", "b"]
    assert order[2:] == (["a"] * 10 + ["b"] * 10) * 3
