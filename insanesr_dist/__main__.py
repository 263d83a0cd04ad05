from insanesr_dist.cli import cli

# Guarded: a process started by spawn or the fork server (the decoded store's builders, DataLoader workers)
# imports this module again as its main module, and must not run the command line once more.
if __name__ == "__main__":
    cli()
