"""The OpenAPI schema's parts that drf-spectacular cannot see by itself: the bearer token and
the session as security schemes, and the error answers every operation may give (all in the
shape of api.errors.ErrorSerializer), so a client and schemathesis know them."""

from __future__ import annotations

from drf_spectacular import openapi
from drf_spectacular.extensions import OpenApiAuthenticationExtension

from .errors import ErrorSerializer


class TokenScheme(OpenApiAuthenticationExtension):
    target_class = "api.authentication.TokenAuthentication"
    name = "tokenAuth"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "An API token made in the panel (Account > API tokens): `Authorization: Bearer vps_...`",
        }


class SessionScheme(OpenApiAuthenticationExtension):
    target_class = "api.authentication.SessionAuthentication"
    name = "sessionAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "apiKey", "in": "cookie", "name": "vpanel_session"}


class AutoSchema(openapi.AutoSchema):
    def _error_codes(self) -> list[str]:
        codes = ["401", "403", "404", "405", "429"]
        if self.method in ("POST", "PUT", "PATCH", "DELETE"):
            codes += ["400", "409", "415"]
        elif self._get_parameters():
            codes.append("400")  # a filter or page size that is not one
        return codes

    def _get_response_bodies(self, direction="response"):
        responses = super()._get_response_bodies(direction)
        if direction == "response":
            for code in self._error_codes():
                responses.setdefault(code, self._get_response_for_code(ErrorSerializer, code, direction=direction))
        return responses
