"""featpipe's files: each on-disk format in one module, with its version constant and its reader's check.

``features.py``: the feature file (read by ``featpipe.store``); ``classifier.py``: the classifier file (skops).
(The fine-tuning checkpoint is ``finetune/checkpoint.py``'s.)
"""
