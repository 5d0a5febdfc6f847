"""Built-in tasks by name (`task.name`): the registry config validation reads its choices from.

ctr: one binary label; multitask: one binary head per label column, per-head loss weights and
metrics; ranking: query lists with masks, listwise/pairwise losses, NDCG. See tasks/base.py for
the interface a new task (retrieval: query and item towers) implements.
"""

from rankjax.tasks.ctr import ClickTask, MultiTask
from rankjax.tasks.ranking import RankingTask

TASKS = {"ctr": ClickTask, "multitask": MultiTask, "ranking": RankingTask}
