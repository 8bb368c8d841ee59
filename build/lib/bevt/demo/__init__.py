"""`bevt demo`: the paper's Table 1 and 2 in miniature, built on the library (run.py phases, report.py tables)."""
