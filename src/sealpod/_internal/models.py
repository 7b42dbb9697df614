"""Base classes for sealpod's immutable pydantic documents."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self

from pydantic import BaseModel


class RevalidatingModel(BaseModel):
    """A frozen model whose :meth:`model_copy` validates the result again.

    pydantic's default copy skips validation (and would keep values derived from the old
    fields), which would let an updated policy or collateral bypass its own checks.
    """

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy with ``update`` applied and validated again.

        Raises:
            pydantic.ValidationError: the updated document is invalid.
        """
        if not update:
            return self  # immutable: sharing is a copy
        data = self.model_dump()
        data.update(update)
        return self.model_validate(data)
