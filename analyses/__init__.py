"""Analyses of run folders: pure functions (artefacts -> small result dataclass) plus figures.

Each module pairs a function computing a result with functions turning it into plotly
figures and flat ``summary.json`` numbers; the CLI and the dashboard call the same ones.
Dependencies point one way: ``analyses`` imports ``irl_lens``, never the reverse.
"""
