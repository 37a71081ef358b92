import sys

from minilora.cli import main

sys.exit(main())
