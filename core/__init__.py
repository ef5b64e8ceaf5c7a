"""The contract shared by every stage: bundle manifest, text normalisation, tokenizer, errors.

This package imports no other package of ours and never imports torch.
"""
