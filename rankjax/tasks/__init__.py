"""Built-in tasks by name (`task.name`): the registry config validation reads its choices from.

ctr: one binary label; multitask: one binary head per label column, per-head loss weights and
metrics; ranking: query lists with masks, listwise/pairwise losses, NDCG. See tasks/base.py for
the interface a new task implements; retrieval: query and item towers, in-batch negatives with
the log-Q correction, recall@K over the whole corpus.
"""

from rankjax.tasks.ctr import ClickTask, MultiTask
from rankjax.tasks.ranking import RankingTask
from rankjax.tasks.retrieval import RetrievalTask

TASKS = {"ctr": ClickTask, "multitask": MultiTask, "ranking": RankingTask, "retrieval": RetrievalTask}
