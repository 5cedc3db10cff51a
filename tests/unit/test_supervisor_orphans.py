"""A reset ends what the firmware left running and reaps it: the supervisor is PID 1 of its
container, where orphans become its children. Real processes; the test's own child plays PID 1
as a child subreaper (prctl), so orphans come to it as they would to PID 1."""
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import ctypes, os, subprocess, sys, time
    from fotalab.device.main import children, end_orphans
    assert ctypes.CDLL(None).prctl(36, 1, 0, 0, 0) == 0          # PR_SET_CHILD_SUBREAPER
    # the "firmware": starts a long job (as the patcher is), then dies without waiting for it
    firmware = subprocess.Popen([sys.executable, "-c",
        "import subprocess, sys; p = subprocess.Popen(['sleep', '300']); print(p.pid, flush=True)"],
        stdout=subprocess.PIPE, text=True)
    orphan = int(firmware.stdout.readline())
    firmware.wait()
    time.sleep(0.2)
    assert children() == [orphan], (children(), orphan)          # reparented to us, still running
    end_orphans()
    deadline = time.monotonic() + 5
    while children() and time.monotonic() < deadline:            # a zombie not yet seen is reaped next time
        time.sleep(0.05)
        end_orphans()
    print("left", children(), "alive", os.path.exists(f"/proc/{orphan}"))
""")


def test_a_reset_ends_and_reaps_what_the_dead_firmware_left_running():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "left [] alive False"


def test_with_nothing_left_behind_a_reset_reaps_nothing_and_returns():
    done = subprocess.run([sys.executable, "-c", "from fotalab.device.main import end_orphans; end_orphans(); "
                           "print('ok')"], capture_output=True, text=True, timeout=30)
    assert done.stdout.strip() == "ok", done.stderr
