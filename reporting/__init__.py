"""Paper-reproduction reporting: load runs, build tables and plots, the paper's published figures."""
