"""Print an HS256 JWT signed with the demo key of ``jwks.json``.

For trying the example Envoy configuration only: the demo key is public,
so anyone can mint these tokens.  Real deployments verify tokens from their
identity provider (jwt_authn ``remote_jwks``).

    python3 examples/envoy/demo_token.py --org acme --sub alice \\
        --role analyst [--ttl 3600]
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import time

ISSUER = "jitauth-demo"
JWKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "jwks.json")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def demo_key(path: str = JWKS) -> bytes:
    with open(path) as f:
        k = json.load(f)["keys"][0]["k"]
    return base64.urlsafe_b64decode(k + "=" * (-len(k) % 4))


def token(claims: dict, key: bytes, kid: str = "demo") -> str:
    """A compact HS256 JWS of ``claims``."""
    header = {"alg": "HS256", "typ": "JWT", "kid": kid}
    signing_input = "%s.%s" % (
        _b64(json.dumps(header, separators=(",", ":")).encode()),
        _b64(json.dumps(claims, separators=(",", ":")).encode()))
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256)
    return signing_input + "." + _b64(signature.digest())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--org", required=True, help="the account claim")
    parser.add_argument("--sub", required=True, help="the subject claim")
    parser.add_argument("--role", action="append", default=[])
    parser.add_argument("--ttl", type=int, default=3600, help="seconds")
    args = parser.parse_args()

    now = int(time.time())
    claims = {"iss": ISSUER, "sub": args.sub, "org": args.org,
              "roles": args.role, "iat": now, "exp": now + args.ttl}
    print(token(claims, demo_key()))


if __name__ == "__main__":
    main()
