"""Performance benchmark: tuneforge against Hugging Face `Trainer` and TRL `SFTTrainer` on the same work.

Run it with `python -m bench.run` (see docs/benchmarks.md for the command, the machine and the latest table).
The peers are installed with the `bench` extra (`pip install -e .[bench]`); nothing in `pipelines/` imports them.
"""
