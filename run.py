"""Dark-zone explorer: `python run.py --generations N` runs the loop; `python run.py inspect RUN_DIR` reads it."""
import sys

from cli.main import main

if __name__ == "__main__":
    sys.exit(main())
