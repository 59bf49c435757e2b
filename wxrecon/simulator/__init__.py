"""A faithful local simulator of the provider's four endpoints, with faults.

Python API (see README.md in this directory)::

    from wxrecon.simulator import Simulator, init_dir

    sim_dir = init_dir(tmp / "sim", ledgers=[LedgerSeed("1900000001", "ACC1", 10_000)])
    with Simulator(sim_dir, port=0) as sim:          # serves on a background thread
        admin = sim.admin()                           # AdminClient: ledgers, bills, faults, stats
        env = sim.client_env()                        # WXRECON_* settings for a client

``start_subprocess(dir)`` runs ``python -m wxrecon.simulator serve`` as a child process instead.
"""

from wxrecon.simulator.admin import AdminClient, AdminError
from wxrecon.simulator.faults import FaultKind, FaultRule, FaultSpecError
from wxrecon.simulator.material import KeyMaterial, LedgerSeed, SimDir, SimDirError, init_dir
from wxrecon.simulator.process import SimulatorProcess, SimulatorStartError, start_subprocess
from wxrecon.simulator.server import Simulator
from wxrecon.simulator.state import BusinessConfig

__all__ = [
    "AdminClient",
    "AdminError",
    "BusinessConfig",
    "FaultKind",
    "FaultRule",
    "FaultSpecError",
    "KeyMaterial",
    "LedgerSeed",
    "SimDir",
    "SimDirError",
    "Simulator",
    "SimulatorProcess",
    "SimulatorStartError",
    "init_dir",
    "start_subprocess",
]
