"""``python -m wxrecon.simulator init|serve``: the same commands as ``wxrecon sim``."""

from wxrecon.simulator.cli import app

if __name__ == "__main__":
    app(prog_name="python -m wxrecon.simulator")
