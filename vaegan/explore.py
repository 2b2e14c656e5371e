"""``python -m vaegan.explore``: the latent-space tools of ``vaegan.latent.explore``."""

import sys

from vaegan.latent.explore import main

if __name__ == "__main__":
    sys.exit(main())
