"""Model families as tasks for the one training stack (see moejax/training/task.py)."""
