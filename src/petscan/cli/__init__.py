"""`petscan <command>`: the project's commands outside the DVC stages."""
