"""Authentication: register, log in, refresh, log out, and who am I (prefix /auth)."""

from __future__ import annotations

from quart import Blueprint, current_app, request
from quart_schema import tag_blueprint, validate_request, validate_response

from service import db, identity
from service.config import Settings
from service.schemas.envelope import Success
from service.schemas.users import LoginIn, MeOut, RefreshIn, RegisterIn, TokenPairOut, UserOut
from service.services import accounts

blueprint = Blueprint("auth", __name__, url_prefix="/auth")
tag_blueprint(blueprint, ["auth"])


def _client() -> accounts.Client:
    return accounts.Client(ip=request.remote_addr, user_agent=request.headers.get("User-Agent"))


def _settings() -> Settings:
    settings: Settings = current_app.config["SETTINGS"]
    return settings


def _pair(pair: accounts.TokenPair) -> Success[TokenPairOut]:
    return Success[TokenPairOut](
        data=TokenPairOut(
            access_token=pair.access_token, refresh_token=pair.refresh_token, expires_in=pair.expires_in
        )
    )


@blueprint.post("/register")
@validate_request(RegisterIn)
@validate_response(Success[UserOut], 201)
async def register(data: RegisterIn) -> tuple[Success[UserOut], int]:
    """Create an account.

    New users get the `viewer` role. The password must be 8-128 characters with an upper-case letter,
    a lower-case letter and a digit, and not a common password; a 422 names each rule it breaks.
    409 when the username or email is taken.
    """
    user = await accounts.register(db.session(), data.username, str(data.email), data.password, _client())
    return Success[UserOut](data=UserOut.from_user(user), message="Account created."), 201


@blueprint.post("/login")
@validate_request(LoginIn)
@validate_response(Success[TokenPairOut])
async def login(data: LoginIn) -> Success[TokenPairOut]:
    """Log in with a username (or email) and password.

    Returns an access token (a JWT, sent as `Authorization: Bearer …`) and a refresh token. Any
    failure is the same 401, whatever the reason.
    """
    pair = await accounts.login(db.session(), _settings(), data.username, data.password, _client())
    return _pair(pair)


@blueprint.post("/refresh")
@validate_request(RefreshIn)
@validate_response(Success[TokenPairOut])
async def refresh(data: RefreshIn) -> Success[TokenPairOut]:
    """Exchange a refresh token for a new token pair.

    Refresh tokens rotate: each works once. Presenting one that was already used ends the whole login
    session (it was copied) and answers 401.
    """
    pair = await accounts.refresh(db.session(), _settings(), data.refresh_token, _client())
    return _pair(pair)


@blueprint.post("/logout")
@identity.login_required
@validate_response(Success[None])
async def logout() -> Success[None]:
    """End this login session: its access and refresh tokens are refused from now on, everywhere."""
    caller = await identity.current()
    assert caller.session_id is not None
    await accounts.logout(db.session(), caller.session_id, caller.user_id, _client())
    return Success[None](data=None, message="Logged out.")


@blueprint.get("/me")
@identity.login_required
@validate_response(Success[MeOut])
async def get_me() -> Success[MeOut]:
    """The current user, with roles and permissions."""
    caller = await identity.current()
    user = await accounts.get_user(db.session(), caller.user_id)
    return Success[MeOut](data=MeOut.from_user(user))
