"""From an HTTP request seen by Envoy to a jitauth question.

The mapping is configuration, one YAML file given to ``jitauth serve
--envoy-config``; ``examples/envoy/mapping.yaml`` is a commented example
and the README's "Envoy and other languages" section describes every key.
In short:

- **action and resource**: from the route's ext_authz
  ``context_extensions`` (keys ``action``, ``resource_type``,
  ``resource_id``) when the route sets ``action``; otherwise from the first
  entry of ``routes`` whose method and path template match
  (``POST /reports/{id}/export`` gives action ``reports.export`` on
  ``report:{id}``).  No match: the request is refused (``no_route``).
- **account, subject and roles**: each from one request header or from one
  claim of the JWT that Envoy's ``jwt_authn`` filter verified and put in the
  metadata context.  A missing or malformed value refuses the request
  (``missing_identity``, ``invalid_identity``).
- **context**: chosen request headers, the downstream address and the
  peer certificate's principal, each under a context key of your choice.

This module knows nothing of gRPC or of Envoy's protos: the ext_authz
servicer (:mod:`jitauth.envoy.check`) turns a ``CheckRequest`` into an
:class:`HttpRequest` first.
"""

import re
from dataclasses import dataclass, field
from urllib.parse import unquote

import yaml

from jitauth.model import AuthorizeInput

#: Where Envoy's jwt_authn filter puts what it verified.
JWT_NAMESPACE = "envoy.filters.http.jwt_authn"

DEFAULT_UPSTREAM_HEADERS = {
    "grant_id": "x-jitauth-grant-id",
    "grant_expires_at": "x-jitauth-grant-expires-at",
    "decision_id": "x-jitauth-decision-id",
}
#: A response header by which the upstream keeps its grant alive past the
#: response (it completes the grant itself later).
DEFAULT_KEEP_HEADER = "x-jitauth-keep-grant"

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_HEADER_NAME = re.compile(r"^[a-z0-9!#$%&'*+.^_`|~-]+$")
_CONTEXT_KEY = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_METHOD = re.compile(r"^[A-Z]{1,16}$")


class MappingError(ValueError):
    """The mapping file is invalid; the message names the file and key."""


class Unmapped(Exception):
    """The HTTP request cannot be turned into a question.

    ``reason`` is a stable snake_case code: ``no_route`` (no route of the
    mapping matches), ``missing_identity`` (a header or claim is absent),
    ``invalid_identity`` (a claim has the wrong type, the JWT metadata is
    malformed), ``invalid_request`` (a path parameter is not valid UTF-8).
    """

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(slots=True)
class HttpRequest:
    """What the mapping reads of one HTTP request."""

    method: str
    path: str                   # as sent, query string included
    headers: dict               # lower-case name -> value
    source_address: str = ""
    principal: str = ""         # the TLS peer certificate's principal
    context_extensions: dict = field(default_factory=dict)
    jwt_payload: object = None  # jwt_authn's payload: a dict, or absent


@dataclass(slots=True, frozen=True)
class Source:
    """Where an identity value comes from: a header or a JWT claim."""

    header: str = ""
    claim: tuple = ()           # path into the payload: ("org", "id")
    separator: str | None = None  # roles: how a string value is split

    def describe(self) -> str:
        if self.header:
            return "header %s" % self.header
        return "claim %s" % ".".join(self.claim)


@dataclass(slots=True)
class Route:
    methods: frozenset          # empty: any method
    template: str
    pattern: re.Pattern
    action: str
    resource_type: str
    resource_id: str


@dataclass(slots=True)
class Mapping:
    """A loaded mapping file; :meth:`question` applies it."""

    account: Source
    subject: Source
    roles: Source | None
    jwt_payload_key: str
    context_headers: dict       # header name -> context key
    source_address_key: str
    principal_key: str
    routes: list
    use_context_extensions: bool
    upstream_headers: dict      # grant_id, grant_expires_at, decision_id
    keep_header: str = DEFAULT_KEEP_HEADER   # "" : always complete
    origin: str = "<mapping>"

    def question(self, http: HttpRequest) -> AuthorizeInput:
        """The Authorize question for ``http``; raises :class:`Unmapped`."""
        action, resource_type, resource_id = self._target(http)

        account = self._identity("account", self.account, http)
        subject = self._identity("subject", self.subject, http)
        roles = ()
        if self.roles is not None:
            roles = self._roles(http)

        context = {}
        for header, key in self.context_headers.items():
            value = http.headers.get(header)
            if value is not None:
                context[key] = value
        if self.source_address_key and http.source_address:
            context[self.source_address_key] = http.source_address
        if self.principal_key and http.principal:
            context[self.principal_key] = http.principal
        return AuthorizeInput(
            account_id=account, subject_id=subject, action=action,
            resource_type=resource_type, resource_id=resource_id,
            roles=roles, context=context)

    def _target(self, http: HttpRequest) -> tuple:
        extensions = http.context_extensions
        if self.use_context_extensions and extensions.get("action"):
            return (extensions["action"],
                    extensions.get("resource_type", ""),
                    extensions.get("resource_id", ""))

        path = http.path.partition("?")[0]
        method = http.method.upper()
        for route in self.routes:
            if route.methods and method not in route.methods:
                continue
            match = route.pattern.match(path)
            if match is None:
                continue
            try:
                params = {k: unquote(v, errors="strict")
                          for k, v in match.groupdict().items()}
            except UnicodeDecodeError:
                raise Unmapped("invalid_request", "a path parameter is not "
                               "valid UTF-8") from None
            return (_fill(route.action, params),
                    _fill(route.resource_type, params),
                    _fill(route.resource_id, params))
        raise Unmapped("no_route", "no route of the mapping matches %s %s"
                       % (method[:16], _clip(path)))

    def _identity(self, name: str, source: Source,
                  http: HttpRequest) -> str:
        value = self._lookup(name, source, http)
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise Unmapped("invalid_identity", "%s: %s is not a string"
                           % (name, source.describe()))
        value = str(value)
        if not value:
            raise Unmapped("missing_identity", "%s: %s is empty"
                           % (name, source.describe()))
        return value

    def _roles(self, http: HttpRequest) -> tuple:
        source = self.roles
        try:
            value = self._lookup("roles", source, http)
        except Unmapped as exc:
            if exc.reason == "missing_identity":
                return ()
            raise
        if isinstance(value, str):
            parts = value.split(source.separator)
            return tuple(p.strip() for p in parts if p.strip())
        if isinstance(value, list) and all(isinstance(r, str)
                                           for r in value):
            return tuple(value)
        raise Unmapped("invalid_identity", "roles: %s is not a list of "
                       "strings" % source.describe())

    def _lookup(self, name: str, source: Source, http: HttpRequest):
        if source.header:
            value = http.headers.get(source.header)
            if value is None:
                raise Unmapped("missing_identity", "%s: %s is missing"
                               % (name, source.describe()))
            return value

        payload = http.jwt_payload
        if payload is None:
            raise Unmapped("missing_identity", "%s: no verified JWT in the "
                           "metadata (%s, key %s)"
                           % (name, JWT_NAMESPACE, self.jwt_payload_key))
        if not isinstance(payload, dict):
            raise Unmapped("invalid_identity", "%s: the JWT metadata is not "
                           "an object" % name)
        value = payload
        for step in source.claim:
            if not isinstance(value, dict):
                raise Unmapped("invalid_identity", "%s: %s is not inside an "
                               "object" % (name, source.describe()))
            if step not in value:
                raise Unmapped("missing_identity", "%s: %s is missing"
                               % (name, source.describe()))
            value = value[step]
        if isinstance(value, float):
            # Struct numbers are doubles: {"org": 42} arrives as 42.0.  Past
            # 2**53 a double no longer holds every whole number, and two
            # ids would read as one: refuse those rather than guess.
            if not value.is_integer() or abs(value) > 2**53:
                raise Unmapped("invalid_identity", "%s: %s is a number a "
                               "JSON double cannot hold exactly; send ids "
                               "as strings" % (name, source.describe()))
            value = int(value)
        return value


def _fill(template: str, params: dict) -> str:
    return _PLACEHOLDER.sub(lambda m: params[m.group(1)], template)


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


# ---------------------------------------------------------------------------
# Loading


def load_mapping(path: str) -> Mapping:
    """Read and check a mapping file; raises :class:`MappingError` (and
    ``OSError`` when the file cannot be read)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise MappingError("%s: not valid YAML: %s" % (path, exc)) from None
    return parse_mapping(data, origin=path)


def parse_mapping(data, origin: str = "<mapping>") -> Mapping:
    """Check and convert the parsed YAML of a mapping file."""
    def fail(where: str, message: str):
        raise MappingError("%s: %s: %s" % (origin, where, message))

    if not isinstance(data, dict):
        fail("mapping", "must be a mapping with identity and routes")
    _keys(fail, "mapping", data, {"identity", "jwt", "context", "routes",
                                  "context_extensions", "upstream_headers",
                                  "completion"})

    identity = data.get("identity")
    if not isinstance(identity, dict):
        fail("identity", "is required: where account and subject come "
             "from")
    _keys(fail, "identity", identity, {"account", "subject", "roles"})
    account = _source(fail, "identity.account", identity.get("account"),
                      required=True)
    subject = _source(fail, "identity.subject", identity.get("subject"),
                      required=True)
    roles = _source(fail, "identity.roles", identity.get("roles"),
                    required=False, roles=True)

    jwt = data.get("jwt") or {}
    if not isinstance(jwt, dict):
        fail("jwt", "must be a mapping")
    _keys(fail, "jwt", jwt, {"payload_in_metadata"})
    payload_key = jwt.get("payload_in_metadata", "jwt_payload")
    if not isinstance(payload_key, str) or not payload_key:
        fail("jwt.payload_in_metadata", "must be a non-empty string")

    context = data.get("context") or {}
    if not isinstance(context, dict):
        fail("context", "must be a mapping")
    _keys(fail, "context", context,
          {"headers", "source_address", "principal"})
    headers = context.get("headers") or {}
    if not isinstance(headers, dict):
        fail("context.headers", "must map header names to context keys")
    context_headers = {}
    for header, key in headers.items():
        where = "context.headers[%s]" % header
        context_headers[_header(fail, where, header)] = _context_key(
            fail, where, key)
    source_key = context.get("source_address", "")
    principal_key = context.get("principal", "")
    if source_key:
        _context_key(fail, "context.source_address", source_key)
    if principal_key:
        _context_key(fail, "context.principal", principal_key)
    # A header feeding the same key would stand in for the address or the
    # principal whenever Envoy has none to give: the client's word.
    for name, key in (("source_address", source_key),
                      ("principal", principal_key)):
        if key and key in context_headers.values():
            fail("context.%s" % name, "context key %r is also filled from "
                 "a header; give them different keys" % key)
    if source_key and source_key == principal_key:
        fail("context.principal", "must differ from source_address")

    use_extensions = data.get("context_extensions", True)
    if not isinstance(use_extensions, bool):
        fail("context_extensions", "must be true or false")

    routes = data.get("routes") or []
    if not isinstance(routes, list):
        fail("routes", "must be a list")
    compiled = [_route(fail, "routes[%d]" % i, r)
                for i, r in enumerate(routes)]
    if not compiled and not use_extensions:
        fail("routes", "no routes and context_extensions off: nothing "
             "could ever be mapped")

    upstream = dict(DEFAULT_UPSTREAM_HEADERS)
    given = data.get("upstream_headers") or {}
    if not isinstance(given, dict):
        fail("upstream_headers", "must be a mapping")
    _keys(fail, "upstream_headers", given, set(DEFAULT_UPSTREAM_HEADERS))
    for name, header in given.items():
        upstream[name] = _header(fail, "upstream_headers.%s" % name, header)

    completion = data.get("completion") or {}
    if not isinstance(completion, dict):
        fail("completion", "must be a mapping")
    _keys(fail, "completion", completion, {"keep_header"})
    keep_header = completion.get("keep_header", DEFAULT_KEEP_HEADER)
    if keep_header:
        keep_header = _header(fail, "completion.keep_header", keep_header)

    return Mapping(
        account=account, subject=subject, roles=roles,
        jwt_payload_key=payload_key, context_headers=context_headers,
        source_address_key=source_key, principal_key=principal_key,
        routes=compiled, use_context_extensions=use_extensions,
        upstream_headers=upstream, keep_header=keep_header or "",
        origin=origin)


def _keys(fail, where: str, data: dict, allowed: set) -> None:
    for key in data:
        if key not in allowed:
            fail("%s.%s" % (where, key), "unknown key (expected one of %s)"
                 % ", ".join(sorted(allowed)))


def _header(fail, where: str, name) -> str:
    if not isinstance(name, str) or not _HEADER_NAME.match(name.lower()):
        fail(where, "not a valid header name: %r" % (name,))
    return name.lower()


def _context_key(fail, where: str, key) -> str:
    if not isinstance(key, str) or not _CONTEXT_KEY.match(key):
        fail(where, "not a valid context key: %r" % (key,))
    return key


def _source(fail, where: str, data, *, required: bool,
            roles: bool = False) -> Source | None:
    if data is None:
        if required:
            fail(where, "is required: {header: NAME} or {claim: NAME}")
        return None
    if not isinstance(data, dict):
        fail(where, "must be {header: NAME} or {claim: NAME}")
    allowed = {"header", "claim", "separator"} if roles else {"header",
                                                              "claim"}
    _keys(fail, where, data, allowed)
    if ("header" in data) == ("claim" in data):
        # One source each: falling back from a verified claim to a header
        # the client chose would let the client pick its own identity.
        fail(where, "needs exactly one of header and claim")

    separator = data.get("separator")
    if separator is not None and (not isinstance(separator, str)
                                  or not separator):
        fail(where + ".separator", "must be a non-empty string")
    if "header" in data:
        return Source(header=_header(fail, where + ".header",
                                     data["header"]),
                      separator=separator or ",")

    claim = data["claim"]
    if isinstance(claim, str):
        claim = [claim]
    if (not isinstance(claim, list) or not claim
            or not all(isinstance(c, str) and c for c in claim)):
        fail(where + ".claim", "must be a claim name, or a list of names "
             "for a nested claim")
    return Source(claim=tuple(claim), separator=separator)


def _route(fail, where: str, data) -> Route:
    if not isinstance(data, dict):
        fail(where, "must be a mapping with path and action")
    _keys(fail, where, data, {"method", "path", "action", "resource"})

    methods = data.get("method", [])
    if isinstance(methods, str):
        methods = [methods]
    if not isinstance(methods, list) or not all(
            isinstance(m, str) and _METHOD.match(m) for m in methods):
        fail(where + ".method", "must be an upper-case HTTP method or a "
             "list of them")

    template = data.get("path")
    if not isinstance(template, str) or not template.startswith("/"):
        fail(where + ".path", "is required and must start with /")
    if "?" in template:
        fail(where + ".path", "matches the path only; remove the query")
    pattern, names = "", []
    pos = 0
    for segment in template.split("/"):
        # Two placeholders in one segment ({name}.{ext}) would let a path of
        # many dots make the regular expression backtrack for seconds.
        if len(_PLACEHOLDER.findall(segment)) > 1:
            fail(where + ".path", "at most one {placeholder} per segment "
                 "(%r has more)" % segment)
    for match in _PLACEHOLDER.finditer(template):
        name = match.group(1)
        if name in names:
            fail(where + ".path", "placeholder {%s} used twice" % name)
        names.append(name)
        pattern += re.escape(template[pos:match.start()])
        # One whole or partial segment: a placeholder never spans a "/".
        pattern += "(?P<%s>[^/]+)" % name
        pos = match.end()
    stripped = _PLACEHOLDER.sub("", template)
    if "{" in stripped or "}" in stripped:
        fail(where + ".path", "a brace that is not a {name} placeholder")
    pattern += re.escape(template[pos:])

    action = data.get("action")
    if not isinstance(action, str) or not action:
        fail(where + ".action", "is required")
    resource = data.get("resource") or {}
    if not isinstance(resource, dict):
        fail(where + ".resource", "must be {type: T, id: I}")
    _keys(fail, where + ".resource", resource, {"type", "id"})
    values = {"action": action,
              "resource.type": resource.get("type", ""),
              "resource.id": resource.get("id", "")}
    for key, value in values.items():
        if not isinstance(value, str):
            fail("%s.%s" % (where, key), "must be a string")
        for used in _PLACEHOLDER.findall(value):
            if used not in names:
                fail("%s.%s" % (where, key), "{%s} is not a placeholder "
                     "of the path" % used)
    return Route(
        methods=frozenset(methods), template=template,
        pattern=re.compile(pattern + r"\Z"), action=action,
        resource_type=values["resource.type"],
        resource_id=values["resource.id"])
