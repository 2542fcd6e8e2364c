"""The `factory` command line tool (see app.py); it speaks only the portal's public API."""
