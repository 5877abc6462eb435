"""`toolkit sweep SPEC.yaml`: many recipes on one model, each an independent job.

    spec.py      the spec file: model, calibration, eval, bench, grid and/or points (strict)
    grid.py      a grid's slots and `vary:` axes expanded into named stage lists
    points.py    a point: its resolved recipe, its cache key and its folder's files
    worker.py    one point in its own process: compress (the `toolkit run` job), the kick
                 suite (`toolkit eval --suite kick`), export + `toolkit bench` when asked
    execute.py   points run by a local pool of worker processes
    ray_run.py   ... or as Ray tasks (`--ray`), after a bounded wait for the cluster
    rows.py      one results row per point, read back from its folder
    pareto.py    Pareto fronts (smaller and better) and their plots
    report.py    results.json, the markdown table and report.html
    budget.py    `--budget size=150MB,latency=40ms`: the best point inside it, as a recipe
"""
