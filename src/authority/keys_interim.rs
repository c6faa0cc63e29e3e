//! INTERIM (replaced by keys.rs when it lands): the newest `<kid>.<alg>.der` of the key
//! directory signs; its public key is the JWKS.

use super::config::Authority;
use crate::token::sign::{jwks, SigningKey};
use crate::token::{Alg, KeySet, KeyStore};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub struct Keyring {
    current: Arc<SigningKey>,
    jwks: String,
}

pub struct Discovery {
    issuer: String,
    public_url: String,
}

impl Discovery {
    pub fn of(a: &Authority) -> Discovery {
        Discovery {
            issuer: a.issuer.clone(),
            public_url: a.public_url().to_string(),
        }
    }
}

impl Keyring {
    pub fn load(a: &Authority, _now_ms: i64) -> Result<Keyring, String> {
        let mut found = None;
        let dir = std::fs::read_dir(&a.keys_dir).map_err(|e| e.to_string())?;
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let Some(stem) = name.strip_suffix(".der") else {
                continue;
            };
            let Some((kid, alg)) = stem.rsplit_once('.') else {
                continue;
            };
            let alg = Alg::parse(alg).ok_or_else(|| format!("{name}: unknown alg"))?;
            let der = std::fs::read(e.path()).map_err(|e| e.to_string())?;
            found =
                Some(SigningKey::from_pkcs8(alg, kid, &der).map_err(|e| format!("{name}: {e}"))?);
        }
        let current = Arc::new(found.ok_or("no key")?);
        let jwks = jwks(&[&current]).to_string();
        Ok(Keyring { current, jwks })
    }
    pub fn current(&self) -> Arc<SigningKey> {
        self.current.clone()
    }
    pub fn public_keyset(&self) -> KeySet {
        KeySet::from_jwks(self.jwks.as_bytes(), &super::config::SIGNING_ALGS)
            .map(|(k, _)| k)
            .unwrap_or_default()
    }
    pub fn on_change(&self, _store: Arc<KeyStore>) {}
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        stop.cancelled().await
    }
}

pub fn routes(k: Arc<Keyring>, d: Discovery) -> Router {
    let doc = serde_json::json!({
        "issuer": d.issuer,
        "jwks_uri": format!("{}/.well-known/jwks.json", d.public_url),
        "token_endpoint": format!("{}/v1/token", d.public_url),
    })
    .to_string();
    Router::new()
        .route(
            "/.well-known/jwks.json",
            get(move || {
                let body = k.jwks.clone();
                async move {
                    (
                        [
                            (header::CONTENT_TYPE, "application/json"),
                            (
                                header::CACHE_CONTROL,
                                "public, max-age=300, must-revalidate",
                            ),
                        ],
                        body,
                    )
                        .into_response()
                }
            }),
        )
        .route(
            "/.well-known/openid-configuration",
            get(move || {
                let doc = doc.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], doc).into_response() }
            }),
        )
}
