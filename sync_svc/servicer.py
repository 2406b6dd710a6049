"""gRPC transport of sync_svc: proto <-> domain only (its peers are in peers.py, its wiring in wiring.py)."""

from __future__ import annotations

import datetime as dt

from finpulse.sync.v1 import sync_pb2 as pb
from finpulse.sync.v1 import sync_pb2_grpc as pb_grpc

from svclib.protoconv import optional, set_timestamp
from svclib.validation import format_amount
from sync_svc.catalogue import Catalogues
from sync_svc.service import BankStatus, SyncService
from sync_svc.storage import Job

_JOB_STATES = {
    "queued": pb.JOB_STATE_QUEUED,
    "running": pb.JOB_STATE_RUNNING,
    "succeeded": pb.JOB_STATE_SUCCEEDED,
    "failed": pb.JOB_STATE_FAILED,
    "needs_reconsent": pb.JOB_STATE_NEEDS_RECONSENT,
}


def _progress(job: Job | None) -> pb.SyncProgress:
    """The counters of a job's progress (its `last_problem` is shown as the bank's last_error)."""
    p = job.progress if job else {}
    return pb.SyncProgress(
        accounts_total=p.get("accounts_total", 0),
        accounts_done=p.get("accounts_done", 0),
        pages_fetched=p.get("pages_fetched", 0),
        rows_written=p.get("rows_written", 0),
    )


def _bank_status(status: BankStatus) -> pb.BankSyncStatus:
    job, state = status.job, status.state
    msg = pb.BankSyncStatus(bank_id=status.bank_id, needs_reconsent=status.needs_reconsent, progress=_progress(job))
    if job is not None:
        msg.state = _JOB_STATES[job.state]
        msg.job_id = job.job_id
        msg.attempts = job.attempts
        if job.state == "queued":
            set_timestamp(msg, "next_attempt_at", job.run_after)
        if job.last_error and job.state != "succeeded":
            msg.last_error = job.last_error
        elif job.state == "running" and job.progress.get("last_problem"):
            msg.last_error = job.progress["last_problem"]  # a failed call of the job running now
    if state is not None:
        set_timestamp(msg, "last_success_at", state.last_success_at)
        if state.last_error and not msg.HasField("last_error") and job is not None and job.state != "succeeded":
            msg.last_error = state.last_error
        set_timestamp(msg, "last_error_at", state.last_error_at)
    return msg


def _account(a, bank_names: dict[str, str]) -> pb.Account:
    msg = pb.Account(
        bank_id=a.bank_id,
        bank_name=bank_names.get(a.bank_id, a.bank_id),
        account_id=a.account_id,
        status=a.status or "",
        currency=a.currency or "",
        account_type=a.account_type or "",
        account_sub_type=a.account_sub_type or "",
        nickname=a.nickname or "",
    )
    if a.opening_date is not None:
        msg.opening_date = a.opening_date.isoformat()
    if a.account_number:
        msg.account_number = a.account_number
    set_timestamp(msg, "updated_at", a.updated_at)
    return msg


def _balance(b) -> pb.Balance:
    msg = pb.Balance(
        bank_id=b.bank_id,
        account_id=b.account_id,
        type=b.balance_type,
        amount=format_amount(b.amount),
        currency=b.currency or "",
        credit_debit_indicator=b.credit_debit_indicator or "",
    )
    set_timestamp(msg, "as_of", b.as_of)
    return msg


def _credit(c) -> pb.Credit:
    msg = pb.Credit(
        bank_id=c.bank_id,
        agreement_id=c.agreement_id,
        product_id=c.product_id or "",
        product_name=c.product_name or "",
        product_type=c.product_type or "",
        amount=format_amount(c.amount),
        status=c.status or "",
    )
    for field, value in (("interest_rate", c.interest_rate), ("account_balance", c.account_balance)):
        if value is not None:
            setattr(msg, field, str(value))
    for field, value in (("start_date", c.start_date), ("end_date", c.end_date)):
        if value is not None:
            setattr(msg, field, value.isoformat())
    if c.account_number:
        msg.account_number = c.account_number
    return msg


def _transaction(t) -> pb.Transaction:
    msg = pb.Transaction(
        bank_id=t.bank_id,
        account_id=t.account_id,
        transaction_id=t.transaction_id,
        amount=format_amount(t.amount),
        signed_amount=format_amount(t.signed_amount),
        currency=t.currency or "",
        direction=t.direction,
        status=t.status or "",
        description=t.description or "",
        bank_code=t.bank_code or "",
    )
    for field in ("merchant", "category", "mcc", "agreement_id"):
        value = getattr(t, field)
        if value:
            setattr(msg, field, value)
    set_timestamp(msg, "booking_time", t.booking_time)
    set_timestamp(msg, "value_time", t.value_time)
    return msg


def _event(user_id: str, job: Job) -> pb.SyncEvent:
    msg = pb.SyncEvent(
        user_id=user_id, bank_id=job.bank_id, job_id=job.job_id, state=_JOB_STATES[job.state], progress=_progress(job)
    )
    set_timestamp(msg, "at", job.updated_at)
    if job.last_error and job.state != "succeeded":
        msg.error = job.last_error
    return msg


def _time(msg, field: str) -> dt.datetime | None:
    return getattr(msg, field).ToDatetime(dt.UTC) if msg.HasField(field) else None


class SyncServicer(pb_grpc.SyncServiceServicer):
    def __init__(self, service: SyncService, catalogues: Catalogues):
        self.service = service
        self.catalogues = catalogues
        self.bank_names = {b.id: b.name for b in service.banks}

    async def ListBanks(self, request, context):
        listings = await self.service.list_banks(optional(request, "user_id"))
        response = pb.ListBanksResponse()
        for item in listings:
            bank = response.banks.add(
                id=item.bank.id, name=item.bank.name, connected=item.connected, approval_mode=item.bank.approval_mode
            )
            if item.bank.base_url:
                bank.baseUrl = item.bank.base_url
                bank.status = "configured"
            else:
                bank.status = "missing_url"
                bank.error = "Bank endpoint URL is not configured."
            if item.status is not None:
                bank.sync.CopyFrom(_bank_status(item.status))
                state = item.status.state
                bank.accounts_count = state.accounts_count if state else 0
                bank.transactions_count = state.transactions_count if state else 0
                bank.credits_count = state.credits_count if state else 0
        return response

    async def StartSync(self, request, context):
        jobs = await self.service.start_sync(
            request.user_id,
            list(request.bank_ids),
            request.reason,
            request.force,
            request.after_change,
            request.skip_synced,
        )
        response = pb.StartSyncResponse(user_id=request.user_id, status="queued", sync_id=jobs[0].job_id)
        for job in jobs:
            ref = response.jobs.add(
                bank_id=job.bank_id, job_id=job.job_id, state=_JOB_STATES[job.state], joined=job.joined
            )
            set_timestamp(ref, "created_at", job.created_at)
        return response

    async def GetSyncStatus(self, request, context):
        overview = await self.service.overview(request.user_id)
        response = pb.GetSyncStatusResponse(
            user_id=request.user_id,
            status="running" if overview.running else "completed",
            banks=[_bank_status(s) for s in overview.banks],
        )
        if overview.sync_id:
            response.sync_id = overview.sync_id
        set_timestamp(response, "synced_at", overview.synced_at)
        return response

    async def WatchSync(self, request, context):
        async for event in self.service.watch(request.user_id, optional(request, "bank_id")):
            yield _event(request.user_id, event.job)

    async def BootstrapBank(self, request, context):
        snap = await self.service.bootstrap(
            request.user_id, request.bank_id, request.page_size, request.page_token, request.skip_sync
        )
        bank = snap.bank
        response = pb.BootstrapBankResponse(
            bank_id=bank.id,
            user_id=request.user_id,
            from_cache=snap.from_cache,
            next_page_token=snap.next_page_token,
            sync=_bank_status(snap.status),
            accounts=[_account(a, self.bank_names) for a in snap.accounts],
            balances=[_balance(b) for b in snap.balances],
            credits=[_credit(c) for c in snap.credits],
            transactions=[_transaction(t) for t in snap.transactions],
        )
        if bank.base_url:
            response.baseUrl = bank.base_url
        error = snap.status.job.last_error if snap.status.job and snap.status.job.state != "succeeded" else None
        for part, rows in (
            ("accounts", snap.accounts),
            ("balances", snap.balances),
            ("transactions", snap.transactions),
            ("credits", snap.credits),
        ):
            getattr(response.status, part).CopyFrom(
                pb.PartStatus(state="error" if error else "ok", message=error or f"{len(rows)} {part} stored")
            )
        if snap.status.state is not None:
            set_timestamp(response, "fetched_at", snap.status.state.last_success_at)
        return response

    async def ListAccounts(self, request, context):
        rows = await self.service.accounts(request.user_id, optional(request, "bank_id"))
        return pb.ListAccountsResponse(accounts=[_account(a, self.bank_names) for a in rows])

    async def ListBalances(self, request, context):
        rows = await self.service.balances(request.user_id, optional(request, "bank_id"))
        return pb.ListBalancesResponse(balances=[_balance(b) for b in rows])

    async def ListCredits(self, request, context):
        rows = await self.service.credits(request.user_id, optional(request, "bank_id"))
        return pb.ListCreditsResponse(credits=[_credit(c) for c in rows])

    async def ListTransactions(self, request, context):
        rows, token = await self.service.transactions(
            request.user_id,
            optional(request, "bank_id"),
            optional(request, "account_id"),
            _time(request, "since"),
            _time(request, "until"),
            request.page_size,
            request.page_token,
        )
        return pb.ListTransactionsResponse(transactions=[_transaction(t) for t in rows], next_page_token=token)

    async def GetAggregates(self, request, context):
        agg = await self.service.aggregates(
            request.user_id,
            request.months,
            _time(request, "spending_since"),
            request.income_days,
            _time(request, "today_since"),
        )
        response = pb.GetAggregatesResponse(data_version=agg.data_version)
        for row in agg.cash_flow:
            response.cash_flow.add(
                month=row.month.isoformat(),
                currency=row.currency or "",
                income=format_amount(row.income),
                spending=format_amount(row.spending),
            )
        for target, rows in ((response.spending_by_category, agg.spending), (response.spent_today, agg.spent_today)):
            for row in rows:
                target.add(
                    category=row.category or "",
                    currency=row.currency or "",
                    total=format_amount(row.total),
                    count=row.count,
                )
        for row in agg.income_days:
            response.income_days.add(
                day=row.day.isoformat(), currency=row.currency or "", total=format_amount(row.total), count=row.count
            )
        for row in agg.loans:
            loan = response.loan_repayments.add(
                agreement_id=row.agreement_id,
                bank_id=row.bank_id,
                count=row.count,
                total=format_amount(row.total),
                average=format_amount(row.average),
                currency=row.currency or "",
                typical_day=row.typical_day,
                months_paid=[m.isoformat() for m in row.months],
            )
            set_timestamp(loan, "last_paid_at", row.last_paid_at)
        return response

    async def GetDataVersion(self, request, context):
        return pb.GetDataVersionResponse(data_version=await self.service.data_version(request.user_id))

    async def ListProducts(self, request, context):
        products, states = await self.catalogues.products(list(request.bank_ids), request.product_type)
        response = pb.ListProductsResponse()
        for p in products:
            item = response.products.add(
                bank_id=p.bank_id, product_id=p.product_id, product_type=p.product_type, product_name=p.product_name
            )
            for field in ("interest_rate", "min_amount", "max_amount", "commission"):
                value = getattr(p, field)
                if value is not None:
                    setattr(item, field, f"{value.normalize():f}" if field == "interest_rate" else format_amount(value))
            if p.term_months is not None:
                item.term_months = p.term_months
        for bank_id, state in states:
            status = response.banks.add(bank_id=bank_id)
            if state is not None:
                set_timestamp(status, "fetched_at", state.fetched_at)
                if state.last_error:
                    status.error = state.last_error
        return response
