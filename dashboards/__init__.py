"""Reports built from a study's runs in MLflow: `dashboards.report.build_report` (`itstudy report`).

- `runs`: reads one sweep back through `itstudy.tracking` into tidy tables;
- `analysis`: the paper table, the verdict table, the per-task differences;
- `learned`: what the tuned models learned: the finding, format metrics beside EM, the probes;
- `figures`: the data-size curve, the per-task heat map, the verdict plot (matplotlib, Agg);
- `report`: the self-contained HTML (`templates/report.html.j2`), PNG and CSV files.

Means, bootstrap intervals and verdicts are `itstudy.stats`, shared with the table a sweep prints.
"""
