"""The demo's simulator process: ``python -m wxrecon.demo.simproc SIM_DIR PORT``.

Serves the simulator (through its Python API) on loopback until SIGTERM or SIGINT.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
from types import FrameType


def main(argv: list[str]) -> int:
    from wxrecon.logs import configure_logging
    from wxrecon.simulator.server import Simulator

    configure_logging(level="WARNING", json_lines=False)
    directory, port = argv[0], int(argv[1])
    sim = Simulator(directory, host="127.0.0.1", port=port)

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    logging.getLogger(__name__).warning("simulator listening on 127.0.0.1:%d", port)
    with contextlib.suppress(KeyboardInterrupt):
        sim.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
