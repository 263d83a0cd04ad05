from insanesr_dist.cli import cli

cli()
