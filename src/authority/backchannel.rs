//! OIDC Back-Channel Logout 1.0 receiver.
