"""What the benchmarks share: their throwaway databases and CPU accounting from /proc. The
benchmarks themselves are the scripts in bench/."""
