"""Issue 47: stopping the launcher stops every worker it started, and its logs are appended, never truncated."""

import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A worker that writes its PID and then ignores SIGTERM, as a worker blocked in TensorFlow's gRPC did.
STUBBORN = """
import os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
with open(os.path.join(sys.argv[1], f"pid-{os.getpid()}"), "w") as f:
    f.write("x")
print("worker up", flush=True)
while True:
    time.sleep(1)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie has ended
        return f.read().split(")")[-1].split()[0] != "Z"


def _launch(tmp_path, *extra):
    script = tmp_path / "worker.py"
    script.write_text(STUBBORN)
    pids = tmp_path / "pids"
    pids.mkdir(exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "tf_fusionnet.launch", "--workers", "2", "--network", "host",
                             *extra, str(script), str(pids)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True), pids


def test_sigterm_of_the_launcher_ends_every_worker_within_seconds(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "worker1.log").write_text("an earlier launch's log\n")
    launcher, pids = _launch(tmp_path, "--log_dir", str(logs))
    deadline = time.monotonic() + 60
    while len(os.listdir(pids)) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    workers = [int(n.split("-")[1]) for n in os.listdir(pids)]
    assert len(workers) == 2
    launcher.send_signal(signal.SIGTERM)
    _, err = launcher.communicate(timeout=30)
    assert launcher.returncode == 143 and "stopped every worker" in err
    time.sleep(0.5)
    assert not any(_alive(pid) for pid in workers)
    log = (logs / "worker1.log").read_text()
    assert log.startswith("an earlier launch's log\n") and "--- launch at" in log


@pytest.mark.parametrize("args,pattern", [(["--log_dir", "FILE"], r"exists and is not a folder"),
                                          (["--workers", "100000"], r"limit of \d+ open files")])
def test_bad_launcher_arguments_are_one_line(tmp_path, args, pattern):
    if args[0] == "--log_dir":
        (tmp_path / "FILE").write_text("x")
        args = ["--log_dir", str(tmp_path / "FILE")]
    script = tmp_path / "w.py"
    script.write_text("print(1)")
    result = subprocess.run([sys.executable, "-m", "tf_fusionnet.launch", "--network", "host", *args, str(script)],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and __import__("re").search(pattern, result.stderr)
    assert "Traceback" not in result.stderr
