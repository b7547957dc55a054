"""The report: an HTML page rendered from published outputs only.

stage.py     the `report` stage (`run`): reads outputs, publishes report/index.html
sections.py  one function per section, from published outputs
html.py      minimal HTML building blocks
plots.py     the figures (matplotlib, Agg canvas, no Spark)
"""
