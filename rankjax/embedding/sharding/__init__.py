"""Sharding types by name (`embedding.sharding`, per-table overrides): the registry config
validation reads its choices from. One module per type, all with the interface of `base.Sharding`."""

from rankjax.embedding.sharding.base import ShardingType, Sharding
from rankjax.embedding.sharding.column_wise import ColumnWise
from rankjax.embedding.sharding.gspmd_row_wise import GspmdRowWise
from rankjax.embedding.sharding.replicated import Replicated
from rankjax.embedding.sharding.row_wise import RowWise
from rankjax.embedding.sharding.table_row_wise import TableRowWise
from rankjax.embedding.sharding.table_wise import TableWise

SHARDINGS: dict[ShardingType, Sharding] = {s.type: s for s in (Replicated(), TableWise(), RowWise(), ColumnWise(),
                                                               GspmdRowWise(), TableRowWise())}
