"""The commands besides train and predict: evaluate, visualize, export, check-data, study, and bench (which runs
the benchmark scripts of a source checkout, outside this package).

They sit on top of everything else and nothing in the library imports them; `insanesr-dist` (cli.py) loads each
only when it runs.
"""
