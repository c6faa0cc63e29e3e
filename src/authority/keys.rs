//! Signing keys: the key directory, next/current/retired, the JWKS document.
