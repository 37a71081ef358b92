"""``python -m minilora.classroom ...``: the exercises command line (the same as ``minilora exercises``)."""
import sys

from minilora.classroom.grading import exercises_main

sys.exit(exercises_main())
