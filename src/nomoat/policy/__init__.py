"""The owner's answer policy: rules that live outside the weights, so no fine-tune can strip them.

``rules.py`` reads and validates the TOML file (line-numbered errors) into a :class:`rules.Policy`;
``normalize.py`` folds text so spacing, case and look-alike letters do not hide a denied word; ``enforce.py``
checks questions before any generation and screens answers (whole, or a sentence at a time while streaming);
``streams.py`` wraps the server's generation work; ``redteam.py`` is ``nomoat eval --policy``'s attack set.
Nothing here is imported by ``import nomoat``.
"""
