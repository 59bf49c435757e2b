"""``wxrecon demo``: the main job on embedded defaults (see :mod:`wxrecon.demo.flow` and its
rig, :mod:`wxrecon.demo.run`; the command is :func:`wxrecon.demo.command.demo`, loaded by the
command tree when named)."""
