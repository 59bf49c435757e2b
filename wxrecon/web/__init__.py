"""The web console and admin API (``wxrecon web``): FastAPI over the engine and the reads.

Data flows web → engine → client, like the CLI and the tasks; reads go through store/reads.py.
"""
