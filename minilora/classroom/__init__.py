"""The classroom: exercises made from the library's marked solutions, and their grading."""
