"""featpipe's files: each on-disk format in one module, with its version constant and its reader's check.

``features.py``: the feature file (read by ``featpipe.store``); ``classifier.py``: the classifier file (skops);
``checkpoint.py``: the fine-tuning checkpoint (built into a network by ``finetune/checkpoint.py``).
"""
