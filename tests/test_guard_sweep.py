"""The guard sweep's reading (benchmarks/guard_sweep.py) on hand-made curves: where each run's new-domain loss
first reaches the common level, its original-domain loss, linear between evaluations."""

import math

from benchmarks import guard_sweep


def result(curve):
    return guard_sweep.Result("g-freeze", "self", 1.0, 1e-3, curve=curve)


def test_original_loss_is_read_where_the_new_loss_first_reaches_the_level():
    run = result([(0, 4.0, 1.0), (50, 3.0, 1.2), (100, 2.0, 1.6)])
    assert guard_sweep.original_at(run, 3.0) == 1.2
    assert math.isclose(guard_sweep.original_at(run, 2.5), 1.4)
    assert math.isnan(guard_sweep.original_at(run, 1.5))  # never reached


def test_the_report_compares_every_run_at_the_loss_all_of_them_reach():
    slow = result([(0, 4.0, 1.0), (50, 3.5, 1.1)])
    fast = guard_sweep.Result("full", "none", 0.0, 1e-3, curve=[(0, 4.0, 1.0), (50, 3.0, 2.0)])
    text = guard_sweep.report([slow, fast])
    assert "first reaches 3.500" in text
    assert "| full | 1e-03 | none | 0 | 3.000 | 2.000 | +1.000 | 1.500 |" in text
