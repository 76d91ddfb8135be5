"""``python -m pyro_spvae``: the ``pyro-spvae`` command line (see :mod:`pyro_spvae.cli`)."""

import sys

from pyro_spvae.cli import main

if __name__ == "__main__":
    sys.exit(main())
