"""The commands besides train and predict: evaluate, visualize, export, check-data, study, bench (with the
measurements it runs in child processes, bench_stages) and the GPU acceptance checks (gpu_checks).

They sit on top of everything else and nothing in the library imports them; `insanesr-dist` (cli.py) loads each
only when it runs.
"""
