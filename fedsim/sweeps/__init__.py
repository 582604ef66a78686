"""Sweeps: the papers' grids run on Ray Tune, and the tables and plots made from them.

The layers, each importing only those above it:

- ``grid``: the grid spec, ``tune/grids/<method>/<grid>.yaml`` read into a validated model;
- ``results``: summaries over seeds, Markdown tables and plots, shared by a finished sweep
  (its summary run) and the reproduction report (fedsim/report.py);
- ``tune_runner``: plans a sweep, runs its trials on Ray Tune and logs them to MLflow;
- ``archive``: moves sweep runs between an MLflow store and the archive, reports/runs;
- ``records``: reads a sweep's trials back from MLflow into SweepRecords (the report's input).

fedsim/report.py composes reports/REPRODUCTION.md from the records.
"""
