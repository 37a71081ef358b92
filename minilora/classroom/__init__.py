"""The classroom: the course's graded steps (exercises.py), the marked regions they are made of
(regions.py), the student workspace and hint files (workspace.py, student_readme.py), the leak check
(leaks.py), grading (grading.py), and the diagrams and timings the tutorials draw (diagrams.py,
timing.py)."""
