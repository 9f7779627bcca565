"""Scripts that rebuild the paper-style tables and figures from grace-bench result files (see README.md)."""
