import sys

from hybrid_assets.cli import main

sys.exit(main())
