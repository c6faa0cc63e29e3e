use aws_lc_rs::signature::{self, VerificationAlgorithm};

/// A JWS algorithm Veto can verify. `none` is deliberately not representable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Alg {
    ES256,
    ES384,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    EdDSA,
    HS256,
    HS384,
    HS512,
}

/// The key family an algorithm needs; a key of one family is never used with another
/// family's algorithm (that is what stops algorithm confusion).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Ec,
    Rsa,
    Okp,
    Hmac,
}

impl Alg {
    pub const ALL: [Alg; 12] = [
        Alg::ES256,
        Alg::ES384,
        Alg::RS256,
        Alg::RS384,
        Alg::RS512,
        Alg::PS256,
        Alg::PS384,
        Alg::PS512,
        Alg::EdDSA,
        Alg::HS256,
        Alg::HS384,
        Alg::HS512,
    ];

    /// Parses the `alg` header value. Exact, case-sensitive match as RFC 7515 requires;
    /// `none` and anything unknown is `None`.
    pub fn parse(s: &str) -> Option<Alg> {
        Alg::ALL.into_iter().find(|a| a.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
            Alg::PS256 => "PS256",
            Alg::PS384 => "PS384",
            Alg::PS512 => "PS512",
            Alg::EdDSA => "EdDSA",
            Alg::HS256 => "HS256",
            Alg::HS384 => "HS384",
            Alg::HS512 => "HS512",
        }
    }

    pub fn family(self) -> Family {
        match self {
            Alg::ES256 | Alg::ES384 => Family::Ec,
            Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256 | Alg::PS384 | Alg::PS512 => {
                Family::Rsa
            }
            Alg::EdDSA => Family::Okp,
            Alg::HS256 | Alg::HS384 | Alg::HS512 => Family::Hmac,
        }
    }

    pub fn is_hmac(self) -> bool {
        self.family() == Family::Hmac
    }

    /// The aws-lc-rs verification algorithm for asymmetric algs.
    pub(crate) fn verification(self) -> Option<&'static dyn VerificationAlgorithm> {
        Some(match self {
            Alg::ES256 => &signature::ECDSA_P256_SHA256_FIXED,
            Alg::ES384 => &signature::ECDSA_P384_SHA384_FIXED,
            Alg::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
            Alg::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
            Alg::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
            Alg::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
            Alg::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
            Alg::PS512 => &signature::RSA_PSS_2048_8192_SHA512,
            Alg::EdDSA => &signature::ED25519,
            Alg::HS256 | Alg::HS384 | Alg::HS512 => return None,
        })
    }

    pub(crate) fn hmac(self) -> Option<aws_lc_rs::hmac::Algorithm> {
        match self {
            Alg::HS256 => Some(aws_lc_rs::hmac::HMAC_SHA256),
            Alg::HS384 => Some(aws_lc_rs::hmac::HMAC_SHA384),
            Alg::HS512 => Some(aws_lc_rs::hmac::HMAC_SHA512),
            _ => None,
        }
    }
}

impl std::fmt::Display for Alg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn none_and_variants_are_not_algorithms() {
        for s in ["none", "None", "NONE", "", "es256", "HS256 ", "RS1"] {
            assert_eq!(Alg::parse(s), None, "{s:?}");
        }
        for a in Alg::ALL {
            assert_eq!(Alg::parse(a.as_str()), Some(a));
        }
    }
}
