"""The SQL of goals: a project's goal definitions (table query_goals). Callers own the transaction."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.models import QueryGoal


@dataclass(frozen=True)
class GoalRecord:
    goal_id: uuid.UUID
    name: str
    kind: str
    value: str
    created_at: datetime


_COLUMNS = (QueryGoal.goal_id, QueryGoal.name, QueryGoal.kind, QueryGoal.value, QueryGoal.created_at)


async def list_goals(connection: AsyncConnection, project_id: int) -> list[GoalRecord]:
    """The project's goals, oldest first (the order they were added)."""
    result = await connection.execute(
        select(*_COLUMNS).where(QueryGoal.project_id == project_id).order_by(QueryGoal.created_at, QueryGoal.goal_id)
    )
    return [GoalRecord(**row._mapping) for row in result]


async def count_goals(connection: AsyncConnection, project_id: int) -> int:
    result = await connection.execute(select(func.count()).where(QueryGoal.project_id == project_id))
    return int(result.scalar_one())


async def create_goal(
    connection: AsyncConnection, project_id: int, *, name: str, kind: str, value: str
) -> GoalRecord | None:
    """The new goal; None if the project already has a goal of this kind and value."""
    result = await connection.execute(
        insert(QueryGoal)
        .values(project_id=project_id, goal_id=uuid.uuid4(), name=name, kind=kind, value=value)
        .on_conflict_do_nothing(index_elements=[QueryGoal.project_id, QueryGoal.kind, QueryGoal.value])
        .returning(*_COLUMNS)
    )
    row = result.one_or_none()
    return None if row is None else GoalRecord(**row._mapping)


async def delete_goal(connection: AsyncConnection, project_id: int, goal_id: uuid.UUID) -> bool:
    result = await connection.execute(
        delete(QueryGoal)
        .where(QueryGoal.project_id == project_id, QueryGoal.goal_id == goal_id)
        .returning(QueryGoal.goal_id)
    )
    return result.one_or_none() is not None
