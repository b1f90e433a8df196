"""The Gradio demo: every finished run under a folder, served in one app (`tuneforge demo runs/`).

`demo.models` finds runs and keeps loaded models in a memory-bounded LRU cache, `demo.inference` turns text
into model inputs and outputs (streaming generation, label probabilities), and `demo.app` lays out the tabs.
"""
