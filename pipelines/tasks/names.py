"""The task registry's names and the recipe sections that belong to one task: plain data, importable by the recipe
schema without importing any task module (which import the schema)."""

TASK_NAMES = ("causal_lm", "seq2seq", "denoising", "classification", "chat")
# Recipe sections that belong to one task (section -> task); the schema rejects them with any other task.
TASK_SECTIONS = {"chat": "chat", "classification": "classification", "seq2seq": "seq2seq"}
# What every task scores from its loss: mean NLL per target (nats) and, for token-level tasks, its exp.
LOSS_SCORES = ("loss", "perplexity")
