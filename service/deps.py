"""Route dependencies (FastAPI-template style): the state, the use case, the admin check.

All ``async def``: FastAPI runs a plain ``def`` dependency in its thread pool, which cost every
``/retrieve`` two thread hand-offs for what are attribute reads.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from core.errors import CropsError, ErrorKind
from service.guard import token_matches
from service.retrieve import RetrieveUseCase
from service.state import ServiceState


async def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.crops
    return state


async def get_use_case(request: Request) -> RetrieveUseCase:
    use_case: RetrieveUseCase = request.app.state.retrieve
    return use_case


async def is_admin(request: Request) -> bool:
    """Whether the request carries the admin token (the guard already refused /admin/* without it)."""
    return token_matches(request.headers.get, request.app.state.admin_token)


async def require_admin(admin: Annotated[bool, Depends(is_admin)]) -> None:
    if not admin:
        raise CropsError(ErrorKind.UNAUTHORIZED, "missing or wrong admin token")


StateDep = Annotated[ServiceState, Depends(get_state)]
UseCaseDep = Annotated[RetrieveUseCase, Depends(get_use_case)]
AdminDep = Annotated[bool, Depends(is_admin)]
