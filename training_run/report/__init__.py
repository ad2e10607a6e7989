"""What runs show: a run's setting in words (:mod:`~training_run.report.describe`), its plots
(:mod:`~training_run.report.plots`, the only module that imports matplotlib), the results as tables
(:mod:`~training_run.report.tables`) and the generated blocks of README and docs/
(:mod:`~training_run.report.pages`)."""
