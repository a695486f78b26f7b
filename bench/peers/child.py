"""The child of the peers' benchmark (bench/peers.py) under supervisord, circus and the two floors.

An agent reduced to what a supervisor sees: a Python process that imports zmq and msgpack (as every
sunsetd agent does before it can answer), creates a zmq context, binds a REP socket on
ipc://DIR/NAME.sock and answers every request with msgpack {"pid": its pid, "name": NAME}.

    python child.py NAME DIR            serve until killed
    python child.py --crash NAME DIR    append its pid to DIR/NAME.starts and exit 1 at once after the
                                        imports (the crash loop of bench/peers.py, section crash)

Between requests it blocks in recv(): no timer, no heartbeat, no wake-up while idle (an Echo agent
under sunsetd stamps a liveness page and polls its sockets: part of what the idle section measures).
Nothing here sets PR_SET_PDEATHSIG: a program written for supervisord or circus would not, and it dies
with its supervisor only if the supervisor stops it. The floor's fork mode (bench/peers/floor.py)
imports this module and calls serve() in a forked child instead of running it as a script.
"""
import os
import sys

import msgpack
import zmq


def serve(name: str, directory: str) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REP)
    sock.setsockopt(zmq.LINGER, 0)
    path = os.path.join(directory, f"{name}.sock")
    try:
        os.unlink(path)  # left by a SIGKILLed predecessor
    except FileNotFoundError:
        pass
    sock.bind(f"ipc://{path}")
    reply = msgpack.packb({"pid": os.getpid(), "name": name})
    while True:
        sock.recv()
        sock.send(reply)


def crash(name: str, directory: str) -> int:
    with open(os.path.join(directory, f"{name}.starts"), "a") as f:
        f.write(f"{os.getpid()}\n")
    return 1


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--crash":
        return crash(argv[1], argv[2])
    serve(argv[0], argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
