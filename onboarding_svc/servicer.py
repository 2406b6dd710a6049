"""gRPC transport of onboarding_svc: proto <-> domain, nothing else (its clients of consent_svc, sync_svc and
dashboard_svc are in `onboarding_svc.peers`, its setup in `onboarding_svc.wiring`)."""

from __future__ import annotations

import datetime as dt

from finpulse.onboarding.v1 import onboarding_pb2 as pb
from finpulse.onboarding.v1 import onboarding_pb2_grpc as pb_grpc

from onboarding_svc.model import COMPLETED, Account, Profile
from onboarding_svc.service import OnboardingService
from svclib.errors import InvalidArgument
from svclib.internal_auth import acting_user
from svclib.protoconv import optional, set_timestamp
from svclib.validation import format_amount


class OnboardingServicer(pb_grpc.OnboardingServiceServicer):
    def __init__(self, service: OnboardingService):
        self.service = service

    async def StartOnboarding(self, request, context):
        session = await self.service.start(request.user_id, optional(request, "user_name"))
        response = pb.StartOnboardingResponse(
            onboarding_id=session.onboarding_id, user_id=session.user_id, status=session.status
        )
        if session.user_name is not None:
            response.user_name = session.user_name
        set_timestamp(response, "created_at", session.created_at)
        return response

    async def GetOnboardingStatus(self, request, context):
        view = await self.service.status(request.onboarding_id, caller=acting_user())
        session = view.session
        response = pb.GetOnboardingStatusResponse(
            onboarding_id=session.onboarding_id,
            user_id=session.user_id,
            status=session.status,
            session_status=pb.SESSION_STATUS_COMPLETED if session.status == COMPLETED else pb.SESSION_STATUS_STARTED,
            current_step=view.current_step,
            completed_steps=view.completed_steps,
        )
        for bank_id, kinds in view.consents_status.items():
            response.consents_status[bank_id].CopyFrom(pb.BankConsentKinds(**kinds))
        set_timestamp(response, "created_at", session.created_at)
        set_timestamp(response, "completed_at", session.completed_at)
        return response

    async def FinalizeOnboarding(self, request, context):
        result = await self.service.finalize(request.onboarding_id, request.user_id)
        response = pb.FinalizeOnboardingResponse(
            onboarding_id=result["onboarding_id"],
            user_id=result["user_id"],
            status=result["status"],
            ready=result["ready"],
            approved_consents_count=result["approved_consents_count"],
            bootstrap_results=[pb.BankBootstrapResult(**item) for item in result["bootstrap_results"]],
        )
        set_timestamp(response, "completed_at", dt.datetime.fromisoformat(result["completed_at"]))
        return response

    async def Login(self, request, context):
        account = await self.service.login(request.user_id, optional(request, "user_name"))
        # The token is the gateway's to give (it alone holds the signing key): it fills `token`.
        return pb.LoginResponse(profile=_user_profile(account))

    async def GetProfile(self, request, context):
        profile = await self.service.profile(request.user_id)
        return _profile_response(pb.GetProfileResponse, request.user_id, profile)

    async def UpdateProfile(self, request, context):
        if not request.HasField("profile"):
            raise InvalidArgument("profile is required", "profile", reason="FIELD_REQUIRED")
        p = request.profile
        fields = {
            "goal_type": _enum_name(pb.GoalType, p.goal_type, "GOAL_TYPE_"),
            "loans_speed": _enum_name(pb.RepaymentSpeed, p.loans_speed, "REPAYMENT_SPEED_"),
            "savings_speed": _enum_name(pb.RepaymentSpeed, p.savings_speed, "REPAYMENT_SPEED_"),
            "loan_strategy": _enum_name(pb.LoanStrategy, p.loan_strategy, "LOAN_STRATEGY_"),
            **{
                name: optional(p, name)
                for name in (
                    "target_amount",
                    "target_date",
                    "note",
                    "horizon_months",
                    "name",
                    "subscription_plan",
                    "is_active",
                )
            },
        }
        profile = await self.service.update_profile(request.user_id, fields)
        return _profile_response(pb.UpdateProfileResponse, request.user_id, profile)


def _enum_name(enum, value: int, prefix: str) -> str | None:
    """An enum value as the domain's lowercase word; None for the zero value (unset)."""
    return enum.Name(value).removeprefix(prefix).lower() if value else None


def _user_profile(account: Account) -> pb.UserProfile:
    return pb.UserProfile(
        user_id=account.user_id,
        name=account.display_name,
        subscription_plan=account.subscription_plan,
        is_active=account.is_active,
    )


def _profile_response(cls, user_id: str, stored: Profile):
    goals, account = stored.goals, stored.account
    profile = pb.Profile(
        name=account.display_name, subscription_plan=account.subscription_plan, is_active=account.is_active
    )
    if goals.goal_type:
        profile.goal_type = pb.GoalType.Value(f"GOAL_TYPE_{goals.goal_type.upper()}")
    if goals.target_amount is not None:
        profile.target_amount = format_amount(goals.target_amount)
    if goals.target_date is not None:
        profile.target_date = goals.target_date.isoformat()
    if goals.note:
        profile.note = goals.note
    if goals.loans_speed:
        profile.loans_speed = pb.RepaymentSpeed.Value(f"REPAYMENT_SPEED_{goals.loans_speed.upper()}")
    if goals.savings_speed:
        profile.savings_speed = pb.RepaymentSpeed.Value(f"REPAYMENT_SPEED_{goals.savings_speed.upper()}")
    if goals.loan_strategy:
        profile.loan_strategy = pb.LoanStrategy.Value(f"LOAN_STRATEGY_{goals.loan_strategy.upper()}")
    if goals.horizon_months is not None:
        profile.horizon_months = goals.horizon_months
    response = cls(user_id=user_id, profile=profile)
    set_timestamp(response, "updated_at", stored.updated_at)
    return response
