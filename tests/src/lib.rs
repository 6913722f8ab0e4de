//! Harness for the end-to-end tests: builds nothing itself, starts the real binaries in temporary directories.
