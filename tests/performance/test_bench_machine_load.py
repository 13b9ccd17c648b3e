"""The benchmarks name windows in which other processes used CPU: on this VM another busy
process makes ours run faster, so such a run is not comparable with a quiet one (README,
Benchmarks). Pure bookkeeping, on a fake /proc/stat and made-up samples."""

from __future__ import annotations

import pytest

from script_loading import load_script

pytestmark = pytest.mark.performance


@pytest.fixture(scope="module")
def support():  # type: ignore[no-untyped-def]
    return load_script("bench_support")


def test_machine_busy_time_is_user_nice_system_irq_softirq_not_idle_iowait_or_steal(support, tmp_path):
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text("cpu  100 50 25 9000 7 3 2 400 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n", encoding="ascii")
    assert support.machine_busy_seconds(str(stat)) == pytest.approx((100 + 50 + 25 + 3 + 2) / support.CLK_TCK)
    stat.write_text("intr 1 2 3\n", encoding="ascii")
    assert support.machine_busy_seconds(str(stat)) is None
    assert support.machine_busy_seconds(str(tmp_path / "missing")) is None


def test_a_window_reports_the_cpu_others_used_and_busy_ones_are_named(support):
    start = support.Sample(wall=10.0, cpu=1.0, sim_cpu=2.0, runqueue_wait=None, involuntary_switches=0,
                           machine_busy=100.0)
    # 4 s: this process used 0.5 s, the simulator 1.0 s, the machine 5.5 s in all: others 4.0 s
    busy_end = support.Sample(wall=14.0, cpu=1.5, sim_cpu=3.0, runqueue_wait=None, involuntary_switches=0,
                              machine_busy=105.5)
    quiet_end = support.Sample(wall=14.0, cpu=1.5, sim_cpu=3.0, runqueue_wait=None, involuntary_switches=0,
                               machine_busy=101.6)
    busy, quiet = busy_end.since(start), quiet_end.since(start)
    assert busy["others_cpu_s"] == 4.0 and quiet["others_cpu_s"] == 0.1
    unknown = support.Sample(wall=14.0, cpu=1.5, sim_cpu=3.0, runqueue_wait=None, involuntary_switches=0).since(start)
    assert unknown["others_cpu_s"] is None
    assert support.busy_windows({"stream": busy, "raw": quiet, "pair": unknown}) == {"stream": 1.0}


def test_steal_is_the_eighth_field_and_absent_on_kernels_that_do_not_give_it(support, tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 50 25 9000 7 3 2 400 0 0\n", encoding="ascii")
    assert support.machine_steal_seconds(str(stat)) == pytest.approx(400 / support.CLK_TCK)
    stat.write_text("cpu  100 50 25 9000 7 3 2\n", encoding="ascii")  # before Linux 2.6.11
    assert support.machine_steal_seconds(str(stat)) is None
    assert support.machine_busy_seconds(str(stat)) == pytest.approx(180 / support.CLK_TCK)
    assert support.machine_steal_seconds(str(tmp_path / "missing")) is None


def test_a_window_reports_the_time_stolen_from_the_vm_and_names_the_windows_it_hurt(support):
    start = support.Sample(wall=10.0, cpu=1.0, sim_cpu=2.0, runqueue_wait=None, involuntary_switches=0,
                           machine_steal=3.0)
    # 4 s: 0.12 s stolen (30 ms a second, a busy host) against 0.01 s (2.5 ms a second)
    stolen = support.Sample(wall=14.0, cpu=1.5, sim_cpu=3.0, runqueue_wait=None, involuntary_switches=0,
                            machine_steal=3.12).since(start)
    quiet = support.Sample(wall=14.0, cpu=1.5, sim_cpu=3.0, runqueue_wait=None, involuntary_switches=0,
                           machine_steal=3.01).since(start)
    unknown = support.Sample(wall=14.0, cpu=1.5, sim_cpu=3.0, runqueue_wait=None, involuntary_switches=0).since(start)
    assert (stolen["steal_ms"], quiet["steal_ms"], unknown["steal_ms"]) == (120, 10, None)
    assert support.stolen_windows({"latency": stolen, "raw": quiet, "pair": unknown}) == {"latency": 30.0}


def test_the_idle_settings_are_the_kernels_words_or_none(support, tmp_path):
    """Runs on machines whose idle vCPU halts at once and on ones where it polls first are not
    comparable, so bench_stream records what the kernel says (on fake sysfs files here)."""
    (tmp_path / "driver").write_text("haltpoll\n", encoding="ascii")
    (tmp_path / "poll").write_text("50000\n", encoding="ascii")
    (tmp_path / "empty").write_text("\n", encoding="ascii")
    paths = {"cpuidle_driver": str(tmp_path / "driver"), "guest_halt_poll_ns": str(tmp_path / "poll"),
             "cpuidle_governor": str(tmp_path / "missing"), "blank": str(tmp_path / "empty")}
    assert support.idle_settings(paths) == {"cpuidle_driver": "haltpoll", "guest_halt_poll_ns": "50000",
                                            "cpuidle_governor": None, "blank": None}
    assert set(support.idle_settings()) == {"cpuidle_driver", "cpuidle_governor", "guest_halt_poll_ns"}
