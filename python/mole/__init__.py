"""mole: run Mixture-of-Lookup-Experts language models with libmole (numpy + cffi, no torch)."""
