"""``python -m datasets.synthetic``: the generator's command line (``datasets.synthetic.cli``)."""

import sys

from datasets.synthetic.cli import main

sys.exit(main())
