"""Bridges to training frameworks; each needs its optional extra (``metasam[lightning]``,
``metasam[huggingface]``)."""
