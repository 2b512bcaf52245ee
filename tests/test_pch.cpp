// Compiled once to hold the precompiled libtorch and GoogleTest headers for all tests.
