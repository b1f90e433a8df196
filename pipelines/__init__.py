"""tuneforge training pipelines: recipes, data, models + LoRA, the one Accelerate loop and task modules."""

__version__ = "0.1.0"
