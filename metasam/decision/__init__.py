"""The decision after a search: which candidate a study returns, and what it can claim.

Beside the search (:mod:`metasam.tuning`, which it builds on), in the order a study runs it:

- :mod:`~metasam.decision.candidate` — what races: the top trials, the presets, SGD and SAM;
- :mod:`~metasam.decision.racing` — the race that *selects* (successive halving over paired
  instances by default, F-Race as an option), pure bookkeeping over the stored runs;
- :mod:`~metasam.decision.confirmation` — the confirmation that *tests* the winner on fresh
  instances: its size, the corrected tests, Holm over the family; the whole stage simulated;
- :mod:`~metasam.decision.outcome` — the verdict as it is printed and exported;
- :mod:`~metasam.decision.stage` — the race and the confirmation run on the study's storage;
- :mod:`~metasam.decision.budget` — what a study cost, in full-run equivalents;
- :mod:`~metasam.decision.export` — the winner as the optimizer JSON ``metasam best`` writes;
- :mod:`~metasam.decision.compare` — the winner and the baselines trained on test
  (``metasam compare``).
"""
