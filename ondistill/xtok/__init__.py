"""Cross-tokenizer distillation: teacher and student tokenize the same text differently.

- vocab.py: each token as the bytes it stands for; the shared vocabulary of two tokenizers.
- align.py: byte spans of each side's tokens; aligned chunks between shared boundaries.
- translate.py: the driver's side: re-tokenize student batches for the teacher, gather back.
- losses.py: exact-span KD on the shared vocabulary, ULD, and span merging (ALM).
"""
