import sys

from reid_export.synth.cli import main

sys.exit(main())
