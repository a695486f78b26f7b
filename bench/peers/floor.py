"""The floors of bench/peers.py: the least a supervisor of Python children can do.

    python floor.py fork DIR NAME...    this parent imports zmq, msgpack and child.py, then forks one
                                        child per NAME; each calls child.serve(NAME, DIR) (no exec:
                                        the imports are inherited, the zmq context is made after the
                                        fork)
    python floor.py exec DIR NAME...    the same parent, but each child is fork+exec of a fresh
                                        `python child.py NAME DIR` (it imports zmq and msgpack itself)

A child that dies is started again at once, with no policy at all: the parent sleeps in wait() (no
timer, no wake-up while idle) and forks again as soon as the kernel reports the death. SIGTERM or
SIGINT: the children get SIGTERM, are waited for, and the parent exits 0.
"""
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import msgpack  # noqa: E402,F401  (what the fork children inherit already imported)
import zmq  # noqa: E402,F401

import child  # noqa: E402

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "child.py")


def main(argv: list[str]) -> int:
    mode, directory, names = argv[0], argv[1], argv[2:]
    if mode not in ("fork", "exec"):
        raise SystemExit(f"unknown mode {mode}")
    pids: dict[int, str] = {}
    stopping = False

    stop_signals = {signal.SIGTERM, signal.SIGINT}

    def spawn(name: str) -> None:
        # the stop signals are blocked from the fork until the pid is recorded: a stop in between would
        # miss the new child, and the parent would wait for it forever
        signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
        try:
            if stopping:
                return
            pid = os.fork()
            if pid == 0:
                try:
                    signal.signal(signal.SIGTERM, signal.SIG_DFL)
                    signal.signal(signal.SIGINT, signal.SIG_DFL)
                    signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)
                    if mode == "exec":
                        os.execv(sys.executable, [sys.executable, CHILD, name, directory])
                    child.serve(name, directory)
                finally:
                    os._exit(1)
            pids[pid] = name
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)

    def stop(signum, frame) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(pids):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for name in names:
        spawn(name)
    while pids:
        try:
            pid, _ = os.wait()
        except ChildProcessError:
            break
        name = pids.pop(pid, None)
        if name is not None and not stopping:
            spawn(name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
