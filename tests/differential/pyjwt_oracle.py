"""PyJWT as an independent oracle for tests/differential.rs.

One process per test run, JSON lines over stdin/stdout:

  first line in:   {"issuer", "audiences", "algorithms", "leeway", "require", "jwks", "hmac_secret_b64"}
  first line out:  {"ready": true, "pyjwt": "<version>"}
  then per line:   {"id": n, "token": "..."}  ->  {"id": n, "ok": bool, "error": "<Class>: <msg>"}

The key is chosen the way a careful PyJWT integrator does it (and as Veto does): an HS* header
gets the issuer's configured secret; anything else gets the JWKS key of the header's `kid` as a
`PyJWK` (PyJWT then binds the key to that JWK's own `alg`); no `kid`, or an unknown one, is no
key at all. Everything else is PyJWT's own decision: `jwt.decode` with the same allow-list,
audiences, issuer, leeway and required claims as the Veto issuer under test.
"""

import base64
import json
import sys
import warnings

try:
    import jwt
    from jwt import PyJWKSet
except ImportError as e:  # the Rust side turns this into a clear failure
    print(json.dumps({"ready": False, "error": f"PyJWT is not installed: {e}"}), flush=True)
    sys.exit(3)

if not jwt.algorithms.has_crypto:
    print(json.dumps({"ready": False, "error": "PyJWT lacks cryptography: install 'pyjwt[crypto]'"}), flush=True)
    sys.exit(3)

warnings.simplefilter("ignore")


def main() -> None:
    cfg = json.loads(sys.stdin.readline())
    keys = {k.key_id: k for k in PyJWKSet.from_dict(cfg["jwks"]).keys}
    secret = base64.urlsafe_b64decode(cfg["hmac_secret_b64"])
    options = {"require": cfg["require"]}
    print(json.dumps({"ready": True, "pyjwt": jwt.__version__}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        token = req["token"]
        try:
            header = jwt.get_unverified_header(token)
            alg = header.get("alg")
            if isinstance(alg, str) and alg.startswith("HS"):
                key = secret
            else:
                key = keys.get(header.get("kid"))
                if key is None:
                    raise LookupError("oracle: no JWKS key for this kid")
            jwt.decode(
                token,
                key,
                algorithms=cfg["algorithms"],
                audience=cfg["audiences"],
                issuer=cfg["issuer"],
                leeway=cfg["leeway"],
                options=options,
            )
            out = {"id": req["id"], "ok": True}
        except Exception as e:  # noqa: BLE001 - any refusal is an answer
            out = {"id": req["id"], "ok": False, "error": f"{type(e).__name__}: {e}"[:300]}
        sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
