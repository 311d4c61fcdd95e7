"""Meta-learning across studies: task descriptors, the knowledge base of finished studies, and
what transfers from it (a zero-shot portfolio, bounding boxes of the winners' ranges)."""

from metasam.meta.descriptors import TaskDescriptor, describe_task
from metasam.meta.portfolio import bounding_box, greedy_portfolio, similarity_weights

__all__ = ["TaskDescriptor", "bounding_box", "describe_task", "greedy_portfolio",
           "similarity_weights"]
