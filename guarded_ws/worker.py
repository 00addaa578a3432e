"""A worker process, started by the supervisor: ``python -m guarded_ws.worker INDEX ADMIN_SOCKET``.

The configuration (secrets included) comes pickled on stdin, from the supervisor
that spawned us: never in argv or the environment, where other users could read it.
"""

from __future__ import annotations

import ctypes
import logging
import os
import pickle
import signal
import sys

from . import runner

_PR_SET_PDEATHSIG = 1


def main() -> int:
    index, admin_path = int(sys.argv[1]), sys.argv[2]
    config, secret, supervisor_pid = pickle.load(sys.stdin.buffer)
    _die_with(supervisor_pid)
    logging.basicConfig(
        level=config.server.log_level.upper(),
        format=f"%(asctime)s %(levelname)s %(name)s[worker {index}]: %(message)s",
    )
    runner.run(config, secret=secret, admin_path=admin_path)
    return 0


def _die_with(supervisor_pid: int) -> None:
    """A worker must not serve on unsupervised: if the supervisor is killed outright, drain and exit."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the supervisor's own shutdown is all there is
        return
    if os.getppid() != supervisor_pid:  # it died before prctl took effect
        sys.exit(1)


if __name__ == "__main__":
    sys.exit(main())
