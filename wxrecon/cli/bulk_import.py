"""The import's loop: checked rows gathered into batches, each batch one transaction through
:func:`wxrecon.intake.submit_requests` (the Python helper's bulk path).

Only one batch is held at a time. A batch that meets an order stored with other parameters
(a Conflict rolls the whole batch back) is written again row by row, so that row alone is
refused. Between batches the loop checks the Ctrl-C flag; a database error stops it with
what was written so far kept (each batch committed or not at all).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from wxrecon.cli.errors import describe
from wxrecon.store.db import Database

# New ids per ``poll_reductions`` message. Not ``poll_chunk``: at thousands of rows a second,
# one send_task per ten rows was the largest cost of an import. Not MAX_CHUNK (1000)
# either: a message is one task, whose orders one worker process marks SUBMITTED together and
# then sends in turn, so it must end well inside the task's soft time limit (0.6 × the claim
# lease: 72 s by default; 100 orders take a few seconds), and a small import should still
# spread over several worker processes.
CHUNK = 100


class Importer:
    def __init__(
        self, db: Database, sender: Any, refused: Any, batch_size: int, stop_on_error: bool
    ) -> None:
        self.db, self.sender, self.refused = db, sender, refused
        self.batch_size, self.stop_on_error = batch_size, stop_on_error
        self.created = self.existing = 0
        self.last_line = 1  # the header
        self.problem: str | None = None
        self.signers: dict[str, str] = {}

    def counts(self) -> dict[str, int]:
        return {
            "rows": self.created + self.existing + self.refused.count,
            "refused": self.refused.count,
        }

    def run(
        self,
        first: tuple[int, Any] | None,
        rows: Iterable[tuple[int, Any]],
        stop: Any,
        progress: Callable[[], None],
    ) -> None:
        from wxrecon.cli.csv_import import check
        from wxrecon.wechatpay.errors import InvalidRequest

        def all_rows() -> Iterable[tuple[int, Any]]:
            if first is not None:
                yield first
            yield from rows

        batch: list[tuple[int, Any, str]] = []
        for line, row in all_rows():
            if isinstance(row, str):
                refused = row
            else:
                try:
                    request = check(row)
                    batch.append((line, request, self._signer(row.get("caller") or "")))
                    refused = ""
                except InvalidRequest as exc:
                    refused = describe(exc)[1]
            if refused:
                self.refused.add(line, refused)
                if self.stop_on_error:
                    self._write(batch)
                    return
            if len(batch) >= self.batch_size:
                if not self._write(batch):
                    return
                self.last_line = line
                batch = []
                progress()
                if stop:
                    return
        if batch and self._write(batch):
            self.last_line = batch[-1][0]
        progress()

    def _signer(self, named: str) -> str:
        """The row's caller checked as :func:`wxrecon.intake.reduction_caller` does; the
        known ones remembered (a few profiles; an unknown name is checked, and refused, anew
        each time, so a file of bad names cannot grow this)."""
        from wxrecon import intake

        known = self.signers.get(named)
        if known is None:
            known = self.signers[named] = intake.reduction_caller(named or None)
        return known

    def _write(self, batch: list[tuple[int, Any, str]]) -> bool:
        """One batch in one transaction; False when the database failed (nothing of the
        batch is kept) or --stop-on-error met a refusal."""
        from wxrecon import intake
        from wxrecon.domain.errors import Conflict

        if not batch:
            return True
        try:
            try:
                with self.db.transaction() as session:
                    results = []
                    for signer in dict.fromkeys(c for _, _, c in batch):  # one call a caller
                        part = [r for _, r, c in batch if c == signer]
                        results += intake.submit_requests(
                            session, part, enqueue=self.sender, caller=signer, chunk=CHUNK
                        )
            except Conflict:
                return self._one_by_one(batch)
        except SQLAlchemyError as exc:
            self.problem = describe(exc)[1]
            return False
        new = sum(1 for r in results if r.created)
        self.created += new
        self.existing += len(results) - new
        return True

    def _one_by_one(self, batch: list[tuple[int, Any, str]]) -> bool:
        from wxrecon import intake
        from wxrecon.domain.errors import Conflict

        for line, request, signer in batch:
            try:
                with self.db.transaction() as session:
                    (result,) = intake.submit_requests(
                        session, [request], enqueue=self.sender, caller=signer
                    )
            except Conflict as exc:
                self.refused.add(line, describe(exc)[1])
                if self.stop_on_error:
                    return False
                continue
            if result.created:
                self.created += 1
            else:
                self.existing += 1
            self.last_line = line
        return True
