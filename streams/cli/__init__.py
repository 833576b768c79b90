"""The command line: validate, replay, test, worker."""
