"""The DVC pipeline and the command-line runs: thin stage entry points, compose, sweep.

- :mod:`.stages`: ``starshift align`` and the per-night DVC stages (measure, shift, reject),
  all through :func:`starshift.night.align_night`;
- :mod:`.compose`: ``params.yaml`` from ``conf/`` (as DVC's Hydra integration writes it), the
  per-night paths and the stage dispatch (``starshift stage ...``);
- :mod:`.sweep`: ``starshift sweep``, a Hydra (multi)run of one night.
"""
