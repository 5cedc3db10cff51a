"""Report timestamps: strictly increasing per device, so the server's newest-wins never drops
the second of two reports made in one millisecond."""
from fotalab.protocol import ReportClock


def test_two_reports_in_one_millisecond_get_different_timestamps():
    clock = ReportClock(now=lambda: 1000.0004)
    stamps = [clock() for _ in range(3)]
    assert stamps == [1000.0, 1000.001, 1000.002]


def test_the_clock_follows_time_once_it_moves_ahead():
    now = [50.0]
    clock = ReportClock(now=lambda: now[0])
    assert clock() == 50.0 and clock() == 50.001
    now[0] = 51.2345
    assert clock() == 51.234


def test_a_clock_stepped_back_never_repeats_or_goes_back():
    now = [100.0]
    clock = ReportClock(now=lambda: now[0])
    first = clock()
    now[0] = 90.0
    assert clock() > first
