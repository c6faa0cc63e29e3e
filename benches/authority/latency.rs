//! Part 1: sequential refresh latency, local and forwarded, interleaved in rounds with the raw
//! NATS baselines and the HTTP floor, on one topology at one moment.

use crate::{
    env_usize, loadavg, login, ms, pct, refresh, verdict, write_out, Hist, Pct, Rig, HOME, OTHER,
};
use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::StreamExt;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};
use veto::bus::names::SESSION_BUCKET;

const RAW_BUCKET: &str = "BENCH_RAW";
/// A not-before key that never exists (what the authority read on every refresh before its not-befores were kept in memory: a second baseline).
const MISSING_NB: &str = "nb.bench-subject-without-not-before";

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Kind {
    RefreshLocal,
    RefreshForwarded,
    JwksHome,
    JwksOther,
    RawCas,
    RawCasNb,
    RawRr,
    RawRrCas,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::RefreshLocal,
        Kind::RefreshForwarded,
        Kind::JwksHome,
        Kind::JwksOther,
        Kind::RawCas,
        Kind::RawCasNb,
        Kind::RawRr,
        Kind::RawRrCas,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Kind::RefreshLocal => "refresh_local",
            Kind::RefreshForwarded => "refresh_forwarded",
            Kind::JwksHome => "http_jwks_home",
            Kind::JwksOther => "http_jwks_other",
            Kind::RawCas => "raw_kv_read_cas",
            Kind::RawCasNb => "raw_kv_read_read_cas",
            Kind::RawRr => "raw_rr_trivial",
            Kind::RawRrCas => "raw_rr_read_cas",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Kind::RefreshLocal => "refresh via HTTP at the home authority (us)",
            Kind::RefreshForwarded => {
                "refresh via HTTP at the other authority (eu), forwarded to us over NATS"
            }
            Kind::JwksHome => "HTTP GET /.well-known/jwks.json at the us authority",
            Kind::JwksOther => "HTTP GET /.well-known/jwks.json at the eu authority",
            Kind::RawCas => "raw KV entry + update(rev), client on us-js",
            Kind::RawCasNb => "raw KV entry + entry(missing nb key) + update(rev), client on us-js",
            Kind::RawRr => "raw request-reply eu-js -> trivial responder on us-js",
            Kind::RawRrCas => "raw request-reply eu-js -> responder on us-js doing entry + update",
        }
    }
}

struct State {
    http: reqwest::Client,
    local_url: String,
    forwarded_url: String,
    jwks_home: String,
    jwks_other: String,
    local_rt: String,
    forwarded_rt: String,
    kv: kv::Store,
    value: Bytes,
    requester: async_nats::Client,
    request: Bytes,
}

/// The raw baseline's bucket: the session bucket's layout (`store::bucket_config`) under
/// another name, created with `create_stream` (async-nats 0.51's `create_key_value` fails on
/// nats-server 2.9).
pub async fn raw_bucket(js: &async_nats::jetstream::Context) -> Result<kv::Store, String> {
    let mut cfg = veto::authority::store::bucket_config(Duration::from_secs(3600), 1);
    cfg.name = format!("KV_{RAW_BUCKET}");
    cfg.subjects = vec![format!("$KV.{RAW_BUCKET}.>")];
    cfg.description = Some("bench: raw baseline".into());
    js.get_or_create_stream(cfg)
        .await
        .map_err(|e| e.to_string())?;
    js.get_key_value(RAW_BUCKET)
        .await
        .map_err(|e| e.to_string())
}

pub async fn cas(kv: &kv::Store, key: &str, value: Bytes, extra_read: bool) -> Result<(), String> {
    let e = kv
        .entry(key)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("raw key missing")?;
    if extra_read {
        let nb = kv.entry(MISSING_NB).await.map_err(|e| e.to_string())?;
        if nb.is_some() {
            return Err("nb key exists".into());
        }
    }
    kv.update(key, value, e.revision)
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

async fn get(http: &reqwest::Client, url: &str) -> Result<(), String> {
    let r = http.get(url).send().await.map_err(|e| e.to_string())?;
    if !r.status().is_success() {
        return Err(r.status().to_string());
    }
    r.bytes().await.map_err(|e| e.to_string())?;
    Ok(())
}

async fn op(kind: Kind, st: &mut State) -> Result<(), String> {
    match kind {
        Kind::RefreshLocal => {
            st.local_rt = refresh(&st.http, &st.local_url, &st.local_rt).await?.0;
        }
        Kind::RefreshForwarded => {
            st.forwarded_rt = refresh(&st.http, &st.forwarded_url, &st.forwarded_rt)
                .await?
                .0;
        }
        Kind::JwksHome => get(&st.http, &st.jwks_home).await?,
        Kind::JwksOther => get(&st.http, &st.jwks_other).await?,
        Kind::RawCas => cas(&st.kv, "s.raw-local", st.value.clone(), false).await?,
        Kind::RawCasNb => cas(&st.kv, "s.raw-local-nb", st.value.clone(), true).await?,
        Kind::RawRr | Kind::RawRrCas => {
            let subject = if kind == Kind::RawRr {
                "bench.rr.trivial"
            } else {
                "bench.rr.cas"
            };
            let m = tokio::time::timeout(
                Duration::from_secs(2),
                st.requester.request(subject, st.request.clone()),
            )
            .await
            .map_err(|_| "request timed out".to_string())?
            .map_err(|e| e.to_string())?;
            if m.payload.len() < 2 {
                return Err("empty reply".into());
            }
        }
    }
    Ok(())
}

/// Raw responders on the home JS server: `bench.rr.trivial` answers a canned reply of the
/// size of a real home reply; `bench.rr.cas` does entry + update on the raw bucket first.
async fn responders(
    client: async_nats::Client,
    kv: kv::Store,
    value: Bytes,
    reply: Bytes,
) -> Result<Vec<tokio::task::JoinHandle<()>>, String> {
    let mut tasks = Vec::new();
    for (subject, with_cas) in [("bench.rr.trivial", false), ("bench.rr.cas", true)] {
        let mut sub = client
            .queue_subscribe(subject, "bench".into())
            .await
            .map_err(|e| e.to_string())?;
        let (client, kv, value, reply) = (client.clone(), kv.clone(), value.clone(), reply.clone());
        tasks.push(tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let Some(to) = m.reply.clone() else { continue };
                let (client, kv, value, reply) =
                    (client.clone(), kv.clone(), value.clone(), reply.clone());
                // one task per request, like the authority's home responder
                tokio::spawn(async move {
                    if with_cas {
                        if let Err(e) = cas(&kv, "s.raw-rr", value, false).await {
                            eprintln!("raw responder: {e}");
                            return;
                        }
                    }
                    let _ = client.publish(to, reply).await;
                });
            }
        }));
    }
    client.flush().await.map_err(|e| e.to_string())?;
    Ok(tasks)
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        f64::NAN
    }
}

fn hist_row(out: &mut String, what: &str, h: &Hist) {
    let q = |x: f64| {
        h.quantile(x)
            .map(|s| format!("{:.3}", s * 1000.0))
            .unwrap_or_else(|| "-".into())
    };
    let _ = writeln!(
        out,
        "| {what} | {} | {} | {} | {} | {} |",
        h.count,
        q(0.5),
        q(0.9),
        q(0.99),
        h.mean()
            .map(|s| format!("{:.3}", s * 1000.0))
            .unwrap_or_else(|| "-".into())
    );
}

pub async fn part(rig: &mut Rig, out: &mut String) -> Result<(), String> {
    let n = env_usize("BENCH_LAT_N", 2000);
    let rounds = env_usize("BENCH_LAT_ROUNDS", 10).max(1);
    let warmup = env_usize("BENCH_LAT_WARMUP", 100);
    let per_round = n.div_ceil(rounds);
    let http = rig.http.clone();

    // sessions homed in us; one refreshed at us, one at eu
    let local = login(&http, &rig.home, "bench-local").await?;
    let forwarded = login(&http, &rig.home, "bench-forwarded").await?;
    let mut local_rt = local.refresh_token.clone();
    let mut reply_len = 0;
    for _ in 0..3 {
        let (rt, len) = refresh(&http, &rig.home.url("/v1/token"), &local_rt).await?;
        local_rt = rt;
        reply_len = len;
    }
    // a real record (rotated: prev_hash and next_box set) is the raw value
    let home_client = rig.topo.client(HOME).await;
    let js = veto::bus::jetstream(home_client.clone(), None);
    let sessions = js
        .get_key_value(SESSION_BUCKET)
        .await
        .map_err(|e| e.to_string())?;
    let value = sessions
        .get(format!("s.{}", local.session_id))
        .await
        .map_err(|e| e.to_string())?
        .ok_or("session record not found")?;
    let kv = raw_bucket(&js).await?;
    for key in ["s.raw-local", "s.raw-local-nb", "s.raw-rr"] {
        kv.put(key, value.clone())
            .await
            .map_err(|e| e.to_string())?;
    }
    // the request a forwarding authority sends, with a real token; the reply of a real size
    let request: Bytes = serde_json::to_vec(&veto::authority::service::HomeRequest::Refresh {
        refresh_token: local_rt.clone(),
        deadline_ms: Some(veto::now_ms() + 1_500),
    })
    .map_err(|e| e.to_string())?
    .into();
    let reply: Bytes = vec![b'x'; reply_len + r#"{"token":}"#.len()].into();
    let responder_client = rig.topo.client(HOME).await;
    let responder_kv = veto::bus::jetstream(responder_client.clone(), None)
        .get_key_value(RAW_BUCKET)
        .await
        .map_err(|e| e.to_string())?;
    let tasks = responders(responder_client, responder_kv, value.clone(), reply.clone()).await?;
    let requester = rig.topo.client(OTHER).await;

    let mut st = State {
        http: http.clone(),
        local_url: rig.home.url("/v1/token"),
        forwarded_url: rig.other.url("/v1/token"),
        jwks_home: rig.home.jwks_url(),
        jwks_other: rig.other.jwks_url(),
        local_rt,
        forwarded_rt: forwarded.refresh_token.clone(),
        kv,
        value: value.clone(),
        requester,
        request: request.clone(),
    };

    // warm-up (interest across the gateways, connections, caches); not recorded
    let deadline = Instant::now() + Duration::from_secs(20);
    for kind in Kind::ALL {
        let mut ok = 0;
        while ok < warmup {
            match op(kind, &mut st).await {
                Ok(()) => ok += 1,
                Err(e) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    if ok == 0 {
                        eprintln!("warm-up {}: {e}", kind.label());
                    }
                }
                Err(e) => return Err(format!("warm-up {}: {e}", kind.label())),
            }
        }
    }

    let m_home_before = rig.home.metrics().await;
    let m_other_before = rig.other.metrics().await;
    let load = loadavg();
    let started = Instant::now();
    let mut samples: BTreeMap<Kind, Vec<f64>> = BTreeMap::new();
    let mut errors: BTreeMap<Kind, (usize, String)> = BTreeMap::new();
    let mut csv = String::from("kind,round,i,us\n");
    for round in 0..rounds {
        // rotate the order so no kind always follows the same one
        let mut order = Kind::ALL.to_vec();
        order.rotate_left(round % Kind::ALL.len());
        for kind in order {
            for i in 0..per_round {
                let t = Instant::now();
                let r = op(kind, &mut st).await;
                let us = t.elapsed().as_secs_f64() * 1e6;
                match r {
                    Ok(()) => {
                        samples.entry(kind).or_default().push(us);
                        let _ = writeln!(csv, "{},{round},{i},{us:.1}", kind.label());
                    }
                    Err(e) => {
                        let x = errors.entry(kind).or_insert((0, String::new()));
                        x.0 += 1;
                        x.1 = e;
                    }
                }
            }
        }
    }
    let took = started.elapsed();
    let m_home = rig.home.metrics().await;
    let m_other = rig.other.metrics().await;
    for t in tasks {
        t.abort();
    }

    let stats: BTreeMap<Kind, Pct> = samples.iter().map(|(k, v)| (*k, pct(v))).collect();
    let get = |k: Kind| stats.get(&k).copied().unwrap_or_default();

    let _ = writeln!(
        out,
        "\n## 1. Refresh latency (sequential, one request at a time)\n\n\
         {per_round} ops per kind per round x {rounds} rounds, kinds interleaved (order rotated \
         each round), after {warmup} warm-up ops per kind; {:.1} s; load avg before {load}. \
         Raw value = a real rotated session record ({} B); raw request {} B, raw reply {} B \
         (the sizes of the real forwarded request and home reply). Client: one keep-alive \
         reqwest connection per authority; raw NATS clients in the bench process.\n",
        took.as_secs_f64(),
        value.len(),
        request.len(),
        reply.len(),
    );
    let _ = writeln!(
        out,
        "| path | what | n | p50 ms | p90 ms | p99 ms | max ms | mean ms |\n|---|---|---|---|---|---|---|---|"
    );
    let mut sum_csv = String::from("kind,n,p50_ms,p90_ms,p99_ms,max_ms,mean_ms,errors\n");
    for k in Kind::ALL {
        let p = get(k);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            k.label(),
            k.describe(),
            p.n,
            ms(p.p50),
            ms(p.p90),
            ms(p.p99),
            ms(p.max),
            ms(p.mean)
        );
        let _ = writeln!(
            sum_csv,
            "{},{},{},{},{},{},{},{}",
            k.label(),
            p.n,
            ms(p.p50),
            ms(p.p90),
            ms(p.p99),
            ms(p.max),
            ms(p.mean),
            errors.get(&k).map_or(0, |e| e.0)
        );
    }
    for (k, (c, e)) in &errors {
        let _ = writeln!(out, "\n{} errors in {} (last: {e})", c, k.label());
    }

    // ratios
    let _ = writeln!(
        out,
        "\n### Ratios (same run)\n\n| comparison | p50 | p90 | p99 | mean | ≤ 1.5x at p50 / p99 |\n|---|---|---|---|---|---|"
    );
    let mut ratio_row = |what: &str, a: Pct, b: Pct| {
        let (r50, r90, r99, rm) = (
            ratio(a.p50, b.p50),
            ratio(a.p90, b.p90),
            ratio(a.p99, b.p99),
            ratio(a.mean, b.mean),
        );
        let _ = writeln!(
            out,
            "| {what} | {r50:.2}x | {r90:.2}x | {r99:.2}x | {rm:.2}x | {} / {} |",
            verdict(r50 <= 1.5),
            verdict(r99 <= 1.5)
        );
    };
    ratio_row(
        "**A. refresh_local / raw_kv_read_cas** (target)",
        get(Kind::RefreshLocal),
        get(Kind::RawCas),
    );
    ratio_row(
        "**B. refresh_forwarded / raw_rr_read_cas** (target)",
        get(Kind::RefreshForwarded),
        get(Kind::RawRrCas),
    );
    ratio_row(
        "refresh_local / raw_kv_read_read_cas (the authority before its in-memory not-befores)",
        get(Kind::RefreshLocal),
        get(Kind::RawCasNb),
    );
    ratio_row(
        "refresh_forwarded / raw_rr_trivial",
        get(Kind::RefreshForwarded),
        get(Kind::RawRr),
    );
    ratio_row(
        "refresh_forwarded / refresh_local",
        get(Kind::RefreshForwarded),
        get(Kind::RefreshLocal),
    );
    ratio_row(
        "raw_rr_read_cas / raw_kv_read_cas",
        get(Kind::RawRrCas),
        get(Kind::RawCas),
    );
    // HTTP floor subtracted (p50 and mean only: percentiles do not subtract)
    let net = |a: Pct, h: Pct| Pct {
        p50: a.p50 - h.p50,
        mean: a.mean - h.mean,
        ..Default::default()
    };
    let (nl, nf) = (
        net(get(Kind::RefreshLocal), get(Kind::JwksHome)),
        net(get(Kind::RefreshForwarded), get(Kind::JwksOther)),
    );
    let _ = writeln!(
        out,
        "| (refresh_local − http_jwks_home) / raw_kv_read_cas | {:.2}x | | | {:.2}x | {} / n.a. |",
        ratio(nl.p50, get(Kind::RawCas).p50),
        ratio(nl.mean, get(Kind::RawCas).mean),
        verdict(ratio(nl.p50, get(Kind::RawCas).p50) <= 1.5)
    );
    let _ = writeln!(
        out,
        "| (refresh_forwarded − http_jwks_other) / raw_rr_read_cas | {:.2}x | | | {:.2}x | {} / n.a. |",
        ratio(nf.p50, get(Kind::RawRrCas).p50),
        ratio(nf.mean, get(Kind::RawRrCas).mean),
        verdict(ratio(nf.p50, get(Kind::RawRrCas).p50) <= 1.5)
    );

    // the authorities' own view over the same window
    let h_local = Hist::parse(
        &m_home,
        "veto_authority_refresh_seconds",
        &["path=\"local\""],
    )
    .minus(&Hist::parse(
        &m_home_before,
        "veto_authority_refresh_seconds",
        &["path=\"local\""],
    ));
    let h_served = Hist::parse(&m_home, "veto_authority_home_request_seconds", &[]).minus(
        &Hist::parse(&m_home_before, "veto_authority_home_request_seconds", &[]),
    );
    let h_fwd = Hist::parse(
        &m_other,
        "veto_authority_refresh_seconds",
        &["path=\"forwarded\""],
    )
    .minus(&Hist::parse(
        &m_other_before,
        "veto_authority_refresh_seconds",
        &["path=\"forwarded\""],
    ));
    let _ = writeln!(
        out,
        "\n### The authorities' histograms over the measured window\n\n\
         Quantiles interpolated inside buckets (0.2, 0.5, 1, 2, 5 ms ...: coarse); means are \
         exact (sum / count).\n\n\
         | histogram | count | p50 ms | p90 ms | p99 ms | mean ms |\n|---|---|---|---|---|---|"
    );
    hist_row(
        out,
        "us veto_authority_refresh_seconds{path=local}",
        &h_local,
    );
    hist_row(out, "us veto_authority_home_request_seconds", &h_served);
    hist_row(
        out,
        "eu veto_authority_refresh_seconds{path=forwarded}",
        &h_fwd,
    );
    let raw = get(Kind::RawCas);
    let raw_nb = get(Kind::RawCasNb);
    let local = get(Kind::RefreshLocal);
    let mean_ms = |h: &Hist| h.mean().unwrap_or(f64::NAN) * 1e3;
    let _ = writeln!(
        out,
        "\n- server-side local refresh mean / raw_kv_read_cas mean: {:.2}x; / raw_kv_read_read_cas \
         mean: {:.2}x\n- home serving a forwarded refresh (mean) / raw_kv_read_cas mean: {:.2}x\n\
         - HTTP client + server overhead at the home (refresh_local mean − server-side mean): \
         {:.3} ms; http_jwks_home mean {} ms",
        mean_ms(&h_local) / (raw.mean / 1e3),
        mean_ms(&h_local) / (raw_nb.mean / 1e3),
        mean_ms(&h_served) / (raw.mean / 1e3),
        local.mean / 1e3 - mean_ms(&h_local),
        ms(get(Kind::JwksHome).mean),
    );
    let _ = writeln!(
        out,
        "- cost of a subject not-before read (`nb.<hash>`, missing key), which the authority no longer does per refresh: \
         raw_kv_read_read_cas − raw_kv_read_cas = {} ms at p50, {} ms mean, i.e. {:.0}% of a \
         local refresh's p50 ({} ms) and {:.0}% of the raw read+CAS p50",
        ms(raw_nb.p50 - raw.p50),
        ms(raw_nb.mean - raw.mean),
        100.0 * (raw_nb.p50 - raw.p50) / local.p50,
        ms(local.p50),
        100.0 * (raw_nb.p50 - raw.p50) / raw.p50,
    );

    write_out("latency.csv", &sum_csv);
    write_out("latency_samples.csv", &csv);
    let curves: Vec<(String, Vec<f64>)> = Kind::ALL
        .iter()
        .filter_map(|k| samples.get(k).map(|v| (k.label().to_string(), v.clone())))
        .collect();
    write_out(
        "latency_cdf.svg",
        &crate::svg::cdf("veto authority: sequential latency CDF (same run)", &curves),
    );
    let _ = writeln!(
        out,
        "\nFiles: latency.csv (this table), latency_samples.csv (every sample), latency_cdf.svg \
         (CDFs, log time axis)."
    );
    Ok(())
}
