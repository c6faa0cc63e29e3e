/// Why a token was refused. Variants are stable: [`TokenError::reason`] is what clients see in
/// the JSON body and what metrics use as the `reason` label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is larger than allowed")]
    TooLarge,
    #[error("token is not a compact JWS")]
    Malformed(&'static str),
    #[error("signing algorithm is not accepted")]
    UnsupportedAlg,
    #[error("critical header parameter not understood")]
    UnsupportedCrit,
    #[error("issuer is not accepted")]
    WrongIssuer,
    #[error("signing key is not known")]
    UnknownKid,
    #[error("signature is invalid")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is not yet valid")]
    NotYetValid,
    #[error("audience is not accepted")]
    WrongAudience,
    #[error("required claim is missing")]
    MissingClaim(&'static str),
    /// A claim Veto keys revocation or an identity header on is present in a shape other than
    /// its one canonical form (see `token::claims`).
    #[error("claim is not in its accepted form")]
    InvalidClaim(&'static str),
    #[error("token lifetime exceeds the issuer's maximum")]
    LifetimeTooLong,
    /// The issuer's keys have never been loaded: Veto cannot decide (not the client's fault).
    #[error("signing keys are not available")]
    KeysUnavailable,
}

impl TokenError {
    /// One exemplar of every variant, in [`TokenError::index`] order: what the lists of
    /// reasons (`crate::decision::outcomes`) are built from, so no second list of reason
    /// strings exists. A new variant gets the next index and an exemplar here.
    pub const ALL: [TokenError; 14] = [
        TokenError::TooLarge,
        TokenError::Malformed(""),
        TokenError::UnsupportedAlg,
        TokenError::UnsupportedCrit,
        TokenError::WrongIssuer,
        TokenError::UnknownKid,
        TokenError::BadSignature,
        TokenError::Expired,
        TokenError::NotYetValid,
        TokenError::WrongAudience,
        TokenError::MissingClaim(""),
        TokenError::InvalidClaim(""),
        TokenError::LifetimeTooLong,
        TokenError::KeysUnavailable,
    ];

    /// The variant's position in [`TokenError::ALL`] (exhaustive: a new variant does not
    /// compile until it has one).
    pub fn index(&self) -> usize {
        match self {
            TokenError::TooLarge => 0,
            TokenError::Malformed(_) => 1,
            TokenError::UnsupportedAlg => 2,
            TokenError::UnsupportedCrit => 3,
            TokenError::WrongIssuer => 4,
            TokenError::UnknownKid => 5,
            TokenError::BadSignature => 6,
            TokenError::Expired => 7,
            TokenError::NotYetValid => 8,
            TokenError::WrongAudience => 9,
            TokenError::MissingClaim(_) => 10,
            TokenError::InvalidClaim(_) => 11,
            TokenError::LifetimeTooLong => 12,
            TokenError::KeysUnavailable => 13,
        }
    }

    /// Stable, low-cardinality reason code.
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::TooLarge => "token_too_large",
            TokenError::Malformed(_) => "malformed",
            TokenError::UnsupportedAlg => "unsupported_alg",
            TokenError::UnsupportedCrit => "unsupported_crit",
            TokenError::WrongIssuer => "wrong_issuer",
            TokenError::UnknownKid => "unknown_kid",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::WrongAudience => "wrong_audience",
            TokenError::MissingClaim(_) => "missing_claim",
            TokenError::InvalidClaim(_) => "invalid_claim",
            TokenError::LifetimeTooLong => "lifetime_too_long",
            TokenError::KeysUnavailable => "keys_unavailable",
        }
    }

    /// A short description safe to show a client (never echoes token content).
    pub fn description(&self) -> String {
        match self {
            TokenError::Malformed(what) => format!("malformed token: {what}"),
            TokenError::MissingClaim(c) => format!("required claim missing: {c}"),
            TokenError::InvalidClaim(c) => format!("claim is not in its accepted form: {c}"),
            other => other.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TokenError;

    #[test]
    fn every_variant_has_its_exemplar_at_its_index() {
        for (i, e) in TokenError::ALL.iter().enumerate() {
            assert_eq!(e.index(), i, "{e:?}");
        }
        let mut reasons: Vec<&str> = TokenError::ALL.iter().map(TokenError::reason).collect();
        reasons.sort();
        reasons.dedup();
        assert_eq!(reasons.len(), TokenError::ALL.len(), "reasons are distinct");
    }
}
