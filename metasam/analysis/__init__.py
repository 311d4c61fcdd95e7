"""Reading and reporting: the comparison runs, report tables and plots, and explanations of a
bias. (Running the comparison lives beside the search, in :mod:`metasam.decision.compare`.)"""
