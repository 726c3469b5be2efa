"""Starts a multi-worker training on this machine: one process per worker, each with its TF_CONFIG.

    python -m tf_fusionnet.launch --workers 2 train.py --dataset cifar10 --output runs/mw

Picks free loopback ports, gives worker i the ``TF_CONFIG`` of task ``worker:i`` in a cluster of
``--workers`` tasks on 127.0.0.1, adds ``--strategy multiworker`` to the script's arguments, streams
worker 0's output (the chief's) and writes the others' to ``--log_dir``. When a worker exits with
an error (or is killed), the launcher stops the others, prints one line and exits non-zero; the same
command resumes from the last checkpoint. For a cluster of several machines, start ``train.py``
on each host yourself with a ``TF_CONFIG`` naming every host (docs/training.md).

TensorFlow's gRPC server listens on every interface of the machine, whatever host ``TF_CONFIG``
names, and neither authenticates nor encrypts (TensorFlow has no option for either). So by
default (``--network private``, Linux) the launcher first moves itself and its workers into a
network namespace of their own (``unshare --net``), where only their loopback exists: nothing
outside the launch can reach the workers, and they cannot reach the network either (download a
dataset before). ``--network host`` runs them on the machine's network, ports open to anyone who
can reach it: only on a network you trust (docs/reliability.md).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import struct
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


class _Stopped(Exception):
    """The launcher was told to stop (SIGTERM, or SIGHUP when its terminal closed)."""


def _raise_stopped(signum, frame):
    raise _Stopped(signal.Signals(signum).name)


def _stop(processes: list[subprocess.Popen], grace: float = 5.0) -> None:
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
    # Stopping the launcher stops its workers: Python's default SIGTERM would end it at once and
    # leave them training, orphaned (and in a private network, invisible to the host's tools).
    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            signal.signal(sig, _raise_stopped)
        except ValueError:  # launch() called from a thread other than the main one: no handlers there
            break
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
                out = open(logs_path, "a")  # appended: an earlier launch's log is the user's to keep
                out.write(f"--- launch at {time.strftime('%Y-%m-%d %H:%M:%S')}: worker {i} of {workers} ---\n")
                out.flush()
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
    except _Stopped as why:
        _stop(processes)
        print(f"error: stopped ({why}); stopped every worker, each keeping its last finished epoch. Run the same "
              "command again to resume.", file=sys.stderr)
        return 143
    finally:
        _stop(processes)


NETWORKS = ("private", "host")
_INSIDE = "TF_FUSIONNET_LAUNCH_PRIVATE_NETWORK"  # set once the launcher runs in its own namespace


def private_network_prefix() -> list[str] | None:
    """The ``unshare`` command line that gives a program a network namespace of its own (Linux;
    ``--map-root-user`` where this user may not create one directly), or None where none can be made."""
    unshare = shutil.which("unshare")
    if not sys.platform.startswith("linux") or unshare is None:
        return None
    for prefix in ([unshare, "--net"], [unshare, "--net", "--map-root-user"]):
        try:
            if subprocess.run([*prefix, "true"], capture_output=True, timeout=30).returncode == 0:
                return prefix
        except (OSError, subprocess.SubprocessError):
            continue
    return None


def bring_up_loopback() -> None:
    """Sets the ``lo`` interface of this (new, empty) network namespace up: it starts down."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        flags = struct.unpack("16sH", fcntl.ioctl(s, siocgifflags, struct.pack("16sH", b"lo", 0)))[1]
        if not flags & iff_up:
            fcntl.ioctl(s, siocsifflags, struct.pack("16sH", b"lo", flags | iff_up))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tf_fusionnet.launch", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--log_dir", default=None,
                        help="folder for the output of workers 1.. (default: a new temporary folder)")
    parser.add_argument("--network", choices=NETWORKS, default="private",
                        help="private (default): the workers in a network of their own, unreachable from outside "
                             "(Linux); host: on this machine's network, their ports open on every interface")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the script and its arguments, e.g. train.py ...")
    raw_argv = list(sys.argv[1:] if argv is None else argv)
    options = parser.parse_args(raw_argv)
    if not options.command:
        parser.error("give the script to run, e.g. train.py --dataset sample")
    if options.workers < 1:
        parser.error(f"--workers must be >= 1, got {options.workers}")
    if not os.path.isfile(options.command[0]):
        parser.error(f"{options.command[0]}: no such script")
    if options.log_dir and os.path.exists(options.log_dir) and not os.path.isdir(options.log_dir):
        parser.error(f"--log_dir {options.log_dir}: exists and is not a folder")
    import resource

    open_files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if options.workers * 8 + 64 > open_files:  # a log, pipes and sockets per worker
        parser.error(f"--workers {options.workers}: more than this process's limit of {open_files} open files "
                     f"allows (about {(open_files - 64) // 8} workers; see ulimit -n)")
    if options.network == "private":
        if os.environ.get(_INSIDE) != str(os.getpid()):
            prefix = private_network_prefix()
            if prefix is None:
                print("error: cannot give the workers a network of their own here (it needs Linux's unshare "
                      "and network namespaces); --network host runs them with TensorFlow's unauthenticated "
                      "gRPC ports open on every interface of this machine (docs/reliability.md)", file=sys.stderr)
                return 1
            sys.stdout.flush()
            # unshare execs (no fork), so the launcher keeps its PID and its workers stay its children.
            os.execve(prefix[0], [*prefix, sys.executable, "-m", "tf_fusionnet.launch", *raw_argv],
                      {**os.environ, _INSIDE: str(os.getpid())})
        bring_up_loopback()
    log_dir = options.log_dir or tempfile.mkdtemp(prefix="tf_fusionnet_launch_")
    if options.workers > 1:
        where = "a private network (loopback only)" if options.network == "private" else "127.0.0.1, ports open on every interface"
        print(f"{options.workers} workers on {where}; output of workers 1..{options.workers - 1} in {log_dir}",
              flush=True)
    return launch(options.workers, options.command, log_dir)


if __name__ == "__main__":
    sys.exit(main())
