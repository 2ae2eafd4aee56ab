"""The `rgbdface` command line: one thin file per command over library functions."""
