"""LineSight's detection engine: a library, no service I/O. README.md has its layout and figures."""
