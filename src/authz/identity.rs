//! Identity headers: which claim goes into which request header on allow. Values are the
//! claims' canonical header form (`token::header_value`); the decider refuses a token whose
//! mapped claim is in any other shape (it is given [`Identity::claims`]), so rendering here
//! never meets one.

use crate::token::{header_value, Claims};
use std::collections::BTreeMap;

pub struct Identity {
    /// header → claim
    mapping: BTreeMap<String, String>,
}

impl Identity {
    pub fn new(mapping: BTreeMap<String, String>) -> Identity {
        Identity { mapping }
    }

    /// The claims that must be in canonical header form for a token to be allowed.
    pub fn claims(&self) -> Vec<String> {
        self.mapping.values().cloned().collect()
    }

    /// (header, Some(value)) to set, overwriting any client-sent value; (header, None) to
    /// remove, because the token lacks the claim.
    pub fn headers<'a>(
        &'a self,
        claims: &'a Claims,
    ) -> impl Iterator<Item = (&'a str, Option<String>)> + 'a {
        self.mapping.iter().map(move |(h, claim)| {
            // Checked at verification; a claim that fails here is treated as absent.
            (h.as_str(), header_value(&claims.all, claim).ok().flatten())
        })
    }
}
