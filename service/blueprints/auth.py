"""Authentication: register, log in, refresh, log out, and who am I (prefix /auth)."""

from __future__ import annotations

import uuid

from quart import Blueprint
from quart_schema import tag_blueprint, validate_querystring, validate_request, validate_response

from service import config, db, identity, mail, rate_limits
from service.pagination import PageQuery
from service.schemas.envelope import Page, Success
from service.schemas.sessions import ApiTokenCreatedOut, ApiTokenIn, ApiTokenOut
from service.schemas.users import (
    ForgotPasswordIn,
    LoginIn,
    MeOut,
    RefreshIn,
    RegisterIn,
    ResetPasswordIn,
    TokenPairOut,
    UserOut,
    VerifyEmailIn,
)
from service.services import account_mail, accounts, api_tokens

blueprint = Blueprint("auth", __name__, url_prefix="/auth")
tag_blueprint(blueprint, ["auth"])


def _pair(pair: accounts.TokenPair) -> Success[TokenPairOut]:
    return Success[TokenPairOut](
        data=TokenPairOut(
            access_token=pair.access_token, refresh_token=pair.refresh_token, expires_in=pair.expires_in
        )
    )


@blueprint.post("/register")
@rate_limits.register_limits
@validate_request(RegisterIn)
@validate_response(Success[UserOut], 201)
async def register(data: RegisterIn) -> tuple[Success[UserOut], int]:
    """Create an account.

    New users get the `viewer` role, and a link to confirm the email address is mailed at once (see
    `POST /auth/verify`). The password must be 8-128 characters with an upper-case letter, a lower-case
    letter and a digit, and not a common password; a 400 `WEAK_PASSWORD` names each rule it breaks.
    409 when the username or email is taken; 429 past the per-address registration limit.
    """
    session = db.session()
    user = await accounts.register(session, data.username, str(data.email), data.password, identity.client())
    await account_mail.send_verification(session, config.current(), mail.current_mailer(), user)
    return Success[UserOut](data=UserOut.from_user(user), message="Account created."), 201


@blueprint.post("/login")
@rate_limits.login_limits
@validate_request(LoginIn)
@validate_response(Success[TokenPairOut])
async def login(data: LoginIn) -> Success[TokenPairOut]:
    """Log in with a username (or email) and password.

    Returns an access token (a JWT, sent as `Authorization: Bearer …`) and a refresh token. Any
    failure is the same 401, whatever the reason. Attempts are limited per client address and per
    username (429 `RATE_LIMITED` with `Retry-After`).
    """
    pair = await accounts.login(
        db.session(), config.current(), data.username, data.password, identity.client()
    )
    return _pair(pair)


@blueprint.post("/refresh")
@validate_request(RefreshIn)
@validate_response(Success[TokenPairOut])
async def refresh(data: RefreshIn) -> Success[TokenPairOut]:
    """Exchange a refresh token for a new token pair.

    Refresh tokens rotate: each works once. Presenting one that was already used ends the whole login
    session (it was copied) and answers 401.
    """
    pair = await accounts.refresh(db.session(), config.current(), data.refresh_token, identity.client())
    return _pair(pair)


@blueprint.post("/logout")
@identity.login_required
@validate_response(Success[None])
async def logout() -> Success[None]:
    """Log out: end this login session.

    Its access and refresh tokens are refused from now on, everywhere. 403 for a personal API token, which has
    no login session (revoke the token instead).
    """
    await accounts.logout(db.session(), await identity.current(), identity.client())
    return Success[None](data=None, message="Logged out.")


@blueprint.get("/me")
@identity.login_required
@validate_response(Success[MeOut])
async def get_me() -> Success[MeOut]:
    """Get the current user.

    With roles and permissions, and whether the email address is confirmed.
    """
    caller = await identity.current()
    user = await accounts.get_user(db.session(), caller.user_id)
    return Success[MeOut](data=MeOut.from_user(user))


@blueprint.post("/password/forgot")
@validate_request(ForgotPasswordIn)
@validate_response(Success[None], 202)
async def forgot_password(data: ForgotPasswordIn) -> tuple[Success[None], int]:
    """Ask for a password reset link.

    Always the same 202, whether or not the address has an account. When it does, a single-use link
    that expires (30 minutes by default) is mailed; its token goes to `POST /auth/password/reset`.
    """
    await account_mail.request_password_reset(
        db.session(), config.current(), mail.current_mailer(), str(data.email)
    )
    return Success[None](data=None, message="If the address has an account, a reset link is on its way."), 202


@blueprint.post("/password/reset")
@validate_request(ResetPasswordIn)
@validate_response(Success[None])
async def reset_password(data: ResetPasswordIn) -> Success[None]:
    """Set a new password with the token from a reset link.

    Every login session of the user ends. 400 when the link is invalid, used or expired, or the
    password breaks the policy (`WEAK_PASSWORD`).
    """
    await account_mail.reset_password(db.session(), data.token, data.password, identity.client())
    return Success[None](data=None, message="Password changed; log in with the new one.")


@blueprint.post("/verify")
@validate_request(VerifyEmailIn)
@validate_response(Success[UserOut])
async def verify_email(data: VerifyEmailIn) -> Success[UserOut]:
    """Confirm an email address.

    Send the token from a verification link; 400 when it is invalid, used or expired.
    """
    user = await account_mail.verify_email(db.session(), data.token, identity.client())
    return Success[UserOut](data=UserOut.from_user(user), message="Email address confirmed.")


@blueprint.post("/verify/resend")
@validate_request(ForgotPasswordIn)
@validate_response(Success[None], 202)
async def resend_verification(data: ForgotPasswordIn) -> tuple[Success[None], int]:
    """Mail a new email verification link.

    Always the same 202, whether or not the address has an account.
    """
    await account_mail.resend_verification(
        db.session(), config.current(), mail.current_mailer(), str(data.email)
    )
    return Success[None](data=None, message="If the address needs confirming, a link is on its way."), 202


@blueprint.post("/tokens")
@identity.login_required
@validate_request(ApiTokenIn)
@validate_response(Success[ApiTokenCreatedOut], 201)
async def create_api_token(data: ApiTokenIn) -> tuple[Success[ApiTokenCreatedOut], int]:
    """Create a personal API token for automation.

    The token is shown once. Use it as `Authorization: Bearer sbp_…`; it can do what its scopes allow
    and never more than its owner. Tokens cannot manage tokens: this needs a password login.
    """
    token, secret = await api_tokens.create_token(
        db.session(),
        await identity.current(),
        data.name,
        data.scopes,
        data.expires_in_days,
        identity.client(),
    )
    out = ApiTokenCreatedOut(**ApiTokenOut.model_validate(token).model_dump(), token=secret)
    return Success[ApiTokenCreatedOut](data=out, message="Copy the token now: it is not shown again."), 201


@blueprint.get("/tokens")
@identity.login_required
@validate_querystring(PageQuery)
@validate_response(Page[ApiTokenOut])
async def list_api_tokens(query_args: PageQuery) -> Page[ApiTokenOut]:
    """List your personal API tokens.

    Those not revoked, newest first; never the secrets.
    """
    found, total = await api_tokens.list_tokens(
        db.session(), await identity.current(), query_args.page, query_args.per_page
    )
    return Page[ApiTokenOut].of([ApiTokenOut.model_validate(token) for token in found], query_args, total)


@blueprint.delete("/tokens/<uuid:token_id>")
@identity.login_required
@validate_response(Success[None])
async def revoke_api_token(token_id: uuid.UUID) -> Success[None]:
    """Revoke one of your personal API tokens.

    It is refused everywhere from now on.
    """
    await api_tokens.revoke_token(db.session(), await identity.current(), token_id, identity.client())
    return Success[None](data=None, message="Token revoked.")
