import sys

from genrank_jax.cli import main

sys.exit(main())
