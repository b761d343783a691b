"""User management (prefix /api/v1/users).

Callers with `users:read` see every user; everyone else sees only themselves. Changing another user,
roles or activity needs `users:write` (admins).
"""

from __future__ import annotations

import uuid

from quart import Blueprint
from quart_schema import tag_blueprint, validate_querystring, validate_request, validate_response

from service import config, db, identity, mail, permissions
from service.pagination import PageQuery
from service.schemas.envelope import Page, Success
from service.schemas.sessions import SessionOut
from service.schemas.users import UserCreateIn, UserOut, UserPatchIn, UserPutIn, UserQuery
from service.services import users

blueprint = Blueprint("users", __name__, url_prefix="/users")
tag_blueprint(blueprint, ["users"])


@blueprint.get("")
@identity.login_required
@validate_querystring(UserQuery)
@validate_response(Page[UserOut])
async def list_users(query_args: UserQuery) -> Page[UserOut]:
    """List users.

    Paginated, filtered by `q` (part of the username or email), `role` and `is_active`. Without `users:read`
    the list holds only yourself. `include_deleted=true` needs `users:write`.
    """
    found, total = await users.list_users(db.session(), await identity.current(), query_args)
    return Page[UserOut].of([UserOut.from_user(user) for user in found], query_args, total)


@blueprint.post("")
@identity.permission_required(permissions.USERS_WRITE)
@validate_request(UserCreateIn)
@validate_response(Success[UserOut], 201)
async def create_user(data: UserCreateIn) -> tuple[Success[UserOut], int]:
    """Create a user (admins).

    Roles and activity may be chosen at once; the password policy applies. 409 when the username or email is
    taken.
    """
    user = await users.create_user(
        db.session(),
        config.current(),
        mail.current_mailer(),
        await identity.current(),
        data,
        identity.client(),
    )
    return Success[UserOut](data=UserOut.from_user(user), message="User created."), 201


@blueprint.get("/<uuid:user_id>")
@identity.login_required
@validate_response(Success[UserOut])
async def get_user(user_id: uuid.UUID) -> Success[UserOut]:
    """Get one user.

    404 for users you may not see.
    """
    user = await users.visible_user(db.session(), await identity.current(), user_id)
    return Success[UserOut](data=UserOut.from_user(user))


async def _update(user_id: uuid.UUID, data: UserPatchIn) -> Success[UserOut]:
    user = await users.update_user(
        db.session(),
        config.current(),
        mail.current_mailer(),
        await identity.current(),
        user_id,
        data.model_dump(exclude_unset=True),
        identity.client(),
    )
    return Success[UserOut](data=UserOut.from_user(user), message="User updated.")


@blueprint.patch("/<uuid:user_id>")
@identity.login_required
@validate_request(UserPatchIn)
@validate_response(Success[UserOut])
async def patch_user(user_id: uuid.UUID, data: UserPatchIn) -> Success[UserOut]:
    """Change some fields of a user.

    You may change your own username, email and password; the email and password need
    `current_password`. Changing a password ends the user's other sessions. Only admins may change
    `roles`, `is_active` or other users; fields you may not set are refused with 400 naming them.
    """
    return await _update(user_id, data)


@blueprint.put("/<uuid:user_id>")
@identity.login_required
@validate_request(UserPutIn)
@validate_response(Success[UserOut])
async def put_user(user_id: uuid.UUID, data: UserPutIn) -> Success[UserOut]:
    """Replace a user's editable fields.

    `username` and `email` are required; the rules of PATCH apply.
    """
    return await _update(user_id, data)


@blueprint.delete("/<uuid:user_id>")
@identity.permission_required(permissions.USERS_WRITE)
@validate_response(Success[None])
async def delete_user(user_id: uuid.UUID) -> Success[None]:
    """Soft-delete a user (admins).

    Every session ends at once, and the user vanishes from lists. 409 for the last active admin.
    """
    await users.delete_user(db.session(), await identity.current(), user_id, identity.client())
    return Success[None](data=None, message="User deleted.")


@blueprint.post("/<uuid:user_id>/restore")
@identity.permission_required(permissions.USERS_WRITE)
@validate_response(Success[UserOut])
async def restore_user(user_id: uuid.UUID) -> Success[UserOut]:
    """Restore a soft-deleted user (admins).

    409 when a live user took the username or email meanwhile.
    """
    user = await users.restore_user(db.session(), await identity.current(), user_id, identity.client())
    return Success[UserOut](data=UserOut.from_user(user), message="User restored.")


@blueprint.get("/<uuid:user_id>/sessions")
@identity.login_required
@validate_querystring(PageQuery)
@validate_response(Page[SessionOut])
async def list_user_sessions(user_id: uuid.UUID, query_args: PageQuery) -> Page[SessionOut]:
    """List a user's live login sessions.

    Most recently used first: your own, or anyone's for admins.
    """
    found, total = await users.list_sessions(
        db.session(), await identity.current(), user_id, query_args.page, query_args.per_page
    )
    return Page[SessionOut].of([SessionOut.model_validate(login) for login in found], query_args, total)


@blueprint.delete("/<uuid:user_id>/sessions")
@identity.login_required
@validate_response(Success[None])
async def revoke_user_sessions(user_id: uuid.UUID) -> Success[None]:
    """End every login session of a user.

    Your own, or anyone's for admins. Their tokens are refused everywhere from now on.
    """
    ended = await users.revoke_sessions(
        db.session(), await identity.current(), user_id, None, identity.client()
    )
    return Success[None](data=None, message=f"{ended} session(s) ended.")


@blueprint.delete("/<uuid:user_id>/sessions/<uuid:session_id>")
@identity.login_required
@validate_response(Success[None])
async def revoke_user_session(user_id: uuid.UUID, session_id: uuid.UUID) -> Success[None]:
    """End one login session of a user.

    Its tokens are refused everywhere from now on.
    """
    await users.revoke_sessions(
        db.session(), await identity.current(), user_id, session_id, identity.client()
    )
    return Success[None](data=None, message="Session ended.")
