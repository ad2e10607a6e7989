"""What a run folder shows: a run's setting in words (:mod:`~training_run.report.describe`), its plots
(:mod:`~training_run.report.plots`, the only module that imports matplotlib) and README's generated
tables (:mod:`~training_run.report.tables`)."""
