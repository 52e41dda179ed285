//! Benchmarks: side-by-side comparisons, run by hand, never timed assertions in tests.
