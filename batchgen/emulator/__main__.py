"""`python -m batchgen.emulator [options]`: the same as `batchgen emulator`."""

from batchgen.emulator.serve import main

raise SystemExit(main())
