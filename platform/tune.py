"""`python -m platform.tune EXPERIMENT.yaml`: the platform's command line (the code is `bickd_tune.tune`)."""
from bickd_tune.tune import run_cli

if __name__ == "__main__":
    run_cli()
