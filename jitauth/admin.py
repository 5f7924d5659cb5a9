"""The ``jitauth.v1.Admin`` service: operators see and end grants.

It shares the worker's Authorizer and error table with the Authorizer
service (:class:`jitauth.server.AuthorizerServicer`), so a revocation made
here is seen by every worker at once: grants live in the shared store.
"""

import grpc

from jitauth import wire
from jitauth.v1 import admin_pb2 as apb

SERVICE_NAME = apb.DESCRIPTOR.services_by_name["Admin"].full_name


def _timestamp(message, name: str, ms: int | None) -> None:
    if ms is not None:
        getattr(message, name).FromMilliseconds(ms)


def grant_info(grant) -> apb.GrantInfo:
    info = apb.GrantInfo(
        grant_id=grant.id_hex, state=int(grant.state),
        subject_id=grant.subject_id, action=grant.action,
        resource_type=grant.resource_type, resource_id=grant.resource_id,
        rule_id=grant.rule_id, revision=grant.revision, limit=grant.limit,
        quota=grant.quota, units=grant.units)
    _timestamp(info, "issued_at", grant.issued_at_ms)
    _timestamp(info, "expires_at", grant.expires_at_ms)
    return info


def account_response(view) -> apb.GetAccountResponse:
    resp = apb.GetAccountResponse(account_id=view.account_id,
                                  seats=view.seats,
                                  live_grants=len(view.live_grants))
    lic = view.license
    if lic is not None:
        resp.license.plan = lic.plan
        resp.license.status = lic.status.name.lower()
        _timestamp(resp.license, "valid_from", lic.valid_from_ms)
        _timestamp(resp.license, "valid_until", lic.valid_until_ms)
        resp.license.entitlements.extend(lic.entitlements)
        resp.license.limits.update(lic.limits)
        resp.license.attributes.update(lic.attributes)
    for usage in view.quotas:
        quota = resp.quotas.add(quota=usage.quota, period=usage.period,
                                consumed=usage.consumed,
                                reserved=usage.reserved,
                                limit=usage.maximum)
        _timestamp(quota, "period_start", usage.period_start_ms)
        _timestamp(quota, "period_end", usage.period_end_ms)
    return resp


class AdminServicer:
    """Admin methods over the facade held by an ``AuthorizerServicer``."""

    def __init__(self, authorizer_servicer):
        self._front = authorizer_servicer

    def _run(self, method: str, request_cls, request: bytes, context, act):
        """Parse ``request``, apply ``act(facade, message)``; map errors."""
        try:
            msg = wire.parse(request_cls, request)
            return act(self._front._facade(), msg)
        except Exception as exc:
            self._front._fail(context, exc, method)

    def ListGrants(self, request: bytes, context):
        view = self._run("ListGrants", apb.ListGrantsRequest, request,
                         context, lambda f, m: f.account(m.account_id))
        return apb.ListGrantsResponse(
            grants=[grant_info(g) for g in view.live_grants])

    def RevokeGrant(self, request: bytes, context):
        result = self._run("RevokeGrant", apb.RevokeGrantRequest, request,
                           context, lambda f, m: f.revoke(m.grant_id))
        return apb.RevokeGrantResponse(grant_id=result.grant_id,
                                       state=int(result.state),
                                       already_ended=result.already)

    def RevokeAccountGrants(self, request: bytes, context):
        revoked = self._run(
            "RevokeAccountGrants", apb.RevokeAccountGrantsRequest, request,
            context, lambda f, m: f.revoke_account(m.account_id))
        return apb.RevokeAccountGrantsResponse(revoked=revoked)

    def GetAccount(self, request: bytes, context):
        view = self._run("GetAccount", apb.GetAccountRequest, request,
                         context, lambda f, m: f.account(m.account_id))
        return account_response(view)


def method_handlers(servicer: AdminServicer) -> dict:
    """Handlers taking raw bytes, like the Authorizer service's."""
    responses = {
        "ListGrants": apb.ListGrantsResponse,
        "RevokeGrant": apb.RevokeGrantResponse,
        "RevokeAccountGrants": apb.RevokeAccountGrantsResponse,
        "GetAccount": apb.GetAccountResponse,
    }
    return {
        name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, name),
            response_serializer=response.SerializeToString)
        for name, response in responses.items()
    }
