"""What is wrong with an input, as a value: the domain names the problem, the edge words it.

A `Problem` names its template (templates/errors/<code>.txt) and the fields that fill it. The
edge (a CLI command, a chat handler) renders it with `render("errors/problem.txt", p=problem)`,
which puts "<sheet> 第<row>行 <column>：" before a problem found in a cell of a file.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Problem:
    """One problem: its template code, the fields that fill it, and where in a file it is (if in a cell)."""

    code: str
    fields: Mapping[str, Any] = field(default_factory=dict)
    sheet: str | None = None
    row: int | None = None
    column: str | None = None

    @property
    def template(self) -> str:
        """The template that words it, under templates/."""
        return f"errors/{self.code}.txt"


class ProblemError(ValueError):
    """Raised with the problems found (nothing was written); `problems` is never empty."""

    def __init__(self, problems: Problem | Iterable[Problem]) -> None:
        self.problems = [problems] if isinstance(problems, Problem) else list(problems)
        super().__init__(", ".join(p.code for p in self.problems))

    @classmethod
    def of(cls, code: str, /, **fields: Any) -> ProblemError:  # noqa: ANN401
        """The error of one problem not tied to a cell."""
        return cls(Problem(code, fields))
