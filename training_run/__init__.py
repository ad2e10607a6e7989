"""A training run: everything between ``python train.py`` (or a sweep) and the agent library, in floors
that import only downwards:

* :mod:`training_run.settings`: :class:`RunConfig`, presets, the settings form ``{"section.field": value}``
  and ``config.json``'s layouts (no torch);
* :mod:`training_run.machine`: device, CPU cores and threads, TF32;
* :mod:`training_run.guards`: divergence, stop signals, the time estimate;
* :mod:`training_run.folder`: :class:`RunFolder`, the one owner of a run folder's format (no torch at
  import);
* :mod:`training_run.report`: what a run is (``describe``), its plots (matplotlib loads only there), the
  results tables and the generated blocks of README and docs/ (``pages``);
* :mod:`training_run.resume`: :func:`plan_run` -> :class:`RunPlan` (start, continue, or refuse; no torch);
* :mod:`training_run.loop`: the epoch loop and :func:`train`, which trains a plan;
* :mod:`training_run.evaluate`: a trained run (``python -m training_run.evaluate RUN``, :func:`load_run`);
* :mod:`training_run.cli`: train.py's flags <-> settings;
* :mod:`training_run.sweep`: sweep files on Ray Tune (``python -m training_run.sweep FILE``).

``agents/`` (the RL agent) and ``routing_env/`` (the env) import nothing from here.
"""
