"""Transfer studies: TOML specs → a job DAG → resumable runs (local, processes, Ray) → transfer matrices.

See ``docs/studies.md``. Modules: ``spec`` (validation), ``planner`` (jobs and ids), ``jobs`` (one job,
atomic results), ``executors`` (local / process / ray), ``runner`` (dependency order, resume),
``engine`` (the training job), ``results`` (the long table), ``matrix`` (pivoted matrices), ``cli``.
"""
