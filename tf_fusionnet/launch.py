"""Starts a multi-worker training on this machine: one process per worker, each with its TF_CONFIG.

    python -m tf_fusionnet.launch --workers 2 train.py --dataset cifar10 --output runs/mw

Picks free loopback ports, gives worker i the ``TF_CONFIG`` of task ``worker:i`` in a cluster of
``--workers`` tasks on 127.0.0.1, adds ``--strategy multiworker`` to the script's arguments, streams
worker 0's output (the chief's) and writes the others' to ``--log_dir``. When a worker exits with
an error (or is killed), the launcher stops the others, prints one line and exits non-zero; the same
command resumes from the last checkpoint. For a cluster of several machines, start ``train.py``
on each host yourself with a ``TF_CONFIG`` naming every host (docs/training.md).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Sequence


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports the OS reports free on ``host`` (held together, so no repeats)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tf_config(hosts: Sequence[str], index: int) -> str:
    """The ``TF_CONFIG`` of worker ``index`` in a cluster of ``hosts`` (``host:port``)."""
    return json.dumps({"cluster": {"worker": list(hosts)}, "task": {"type": "worker", "index": index}})


def _stop(processes: list[subprocess.Popen], grace: float = 10.0) -> None:
    for p in processes:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in processes:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _tail(path: str, lines: int = 5) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:]).rstrip()
    except OSError:
        return ""


def launch(workers: int, command: Sequence[str], log_dir: str, poll_seconds: float = 0.2) -> int:
    """Runs ``command`` (a script and its arguments) as ``workers`` workers; returns the exit code."""
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    args = list(command)
    if not any(a == "--strategy" or a.startswith("--strategy=") for a in args):
        args.append("--strategy=multiworker")
    hosts = [f"127.0.0.1:{port}" for port in free_ports(workers)]
    os.makedirs(log_dir, exist_ok=True)
    processes, logs = [], []
    try:
        for i in range(workers):
            env = {**os.environ, "TF_CONFIG": tf_config(hosts, i)}
            if i == 0:
                out, logs_path = None, None
            else:
                logs_path = os.path.join(log_dir, f"worker{i}.log")
                out = open(logs_path, "w")
            processes.append(subprocess.Popen([sys.executable, *args], env=env, stdout=out,
                                              stderr=subprocess.STDOUT if out else None))
            logs.append(logs_path)
            if out:
                out.close()
        while True:
            codes = [p.poll() for p in processes]
            failed = [i for i, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                i = failed[0]
                _stop(processes)
                how = f"was killed by signal {-codes[i]}" if codes[i] < 0 else f"exited with code {codes[i]}"
                where = f" (its log: {logs[i]})" if logs[i] else ""
                print(f"error: worker {i} {how}{where}; stopped the other workers. Run the same command "
                      "again to resume from the last checkpoint.", file=sys.stderr, flush=True)
                if logs[i]:
                    tail = _tail(logs[i])
                    if tail:
                        print(tail, file=sys.stderr, flush=True)
                return codes[i] if codes[i] > 0 else 1
            if all(c == 0 for c in codes):
                return 0
            time.sleep(poll_seconds)
    except KeyboardInterrupt:
        _stop(processes)
        print("error: interrupted; stopped every worker. Run the same command again to resume.", file=sys.stderr)
        return 130
    finally:
        _stop(processes)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tf_fusionnet.launch", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--log_dir", default=None,
                        help="folder for the output of workers 1.. (default: a new temporary folder)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the script and its arguments, e.g. train.py ...")
    options = parser.parse_args(argv)
    if not options.command:
        parser.error("give the script to run, e.g. train.py --dataset sample")
    if options.workers < 1:
        parser.error(f"--workers must be >= 1, got {options.workers}")
    if not os.path.isfile(options.command[0]):
        parser.error(f"{options.command[0]}: no such script")
    log_dir = options.log_dir or tempfile.mkdtemp(prefix="tf_fusionnet_launch_")
    if options.workers > 1:
        print(f"{options.workers} workers on 127.0.0.1; output of workers 1..{options.workers - 1} in {log_dir}",
              flush=True)
    return launch(options.workers, options.command, log_dir)


if __name__ == "__main__":
    sys.exit(main())
