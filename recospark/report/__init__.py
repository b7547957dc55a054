"""The report: an HTML page rendered from published outputs only.

(the `report` stage itself, which reads the outputs and publishes report/index.html, is recospark/stages/report.py)
sections.py  one function per section, from published outputs
html.py      minimal HTML building blocks
plots.py     the figures (matplotlib, Agg canvas, no Spark)
"""
