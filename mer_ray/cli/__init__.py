"""The `mer-ray` command line: one module per command group, each with a small function
that builds its parser and one handler per command; main.py assembles them.

Handlers import their heavy modules (torch, Ray) inside themselves so `mer-ray --help`
stays fast. A user's mistake (InputError) prints one line and exits 2; a full or
read-only disk (StorageError) prints one line saying what to do and exits 1; never a
traceback.
"""
