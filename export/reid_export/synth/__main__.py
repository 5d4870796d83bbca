import sys

from reid_export.synth.cli import main

# Guarded: worker processes (spawn) import this module again and must not run the CLI.
if __name__ == "__main__":
    sys.exit(main())
