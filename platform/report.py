"""`python -m platform.report experiments/<name>`: regenerate a report (the code is `bickd_tune.report`)."""
import sys

from bickd_tune.report import main

if __name__ == "__main__":
    sys.exit(main())
