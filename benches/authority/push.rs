//! Part 4: forced-logout push. `BENCH_PUSH_SOCKETS` (10,000) sockets open on the home
//! authority, one session each; `BENCH_PUSH_VICTIMS` (1,000) of them belong to one subject.
//!
//! - single socket: `BENCH_PUSH_SINGLE` (50) session revocations one after the other through
//!   `POST /v1/revocations`; for each, on this process's monotonic clock from the request: the
//!   event's arrival on the bus (a core NATS subscriber here: the propagation of the same
//!   event, same run) and the socket's 4403 close. Reported: push − propagation.
//! - fan-out: one subject revocation closing the victims; from the event's arrival to the
//!   last victim's close; every other socket must stay open.
//! - memory per idle socket: the authority's VmRSS before and after opening them.

use crate::{authority_pid, env_usize, ms, pct, verdict, vm_kib, write_out, Rig, ADMIN_TOKEN};
use futures::StreamExt;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const TARGET_OVER_PROPAGATION_MS: f64 = 5.0;
const TARGET_KIB_PER_SOCKET: f64 = 16.0;

/// When each socket closed (monotonic), and with which code.
type Closed = Arc<Mutex<Vec<Option<(Instant, u16)>>>>;

pub async fn part(rig: &mut Rig, out: &mut String) -> Result<(), String> {
    let n = env_usize("BENCH_PUSH_SOCKETS", 10_000);
    let victims = env_usize("BENCH_PUSH_VICTIMS", 1_000).min(n);
    let singles = env_usize("BENCH_PUSH_SINGLE", 50).min(n - victims);
    rig.home.restart();
    rig.home.wait_ready(Duration::from_secs(30)).await;
    let pid = authority_pid(&mut rig.home);
    let base = rig.home.url("");
    let ws_url = format!("ws://127.0.0.1:{}/v1/ws", rig.home.api);
    let http = reqwest::Client::new();

    // sessions: victims first, then one subject each
    let mut tokens = Vec::with_capacity(n);
    let mut sids = Vec::with_capacity(n);
    let created = futures::stream::iter(0..n)
        .map(|i| {
            let (http, base) = (http.clone(), base.clone());
            async move {
                let sub = if i < victims {
                    "victim".to_string()
                } else {
                    format!("u{i}")
                };
                let r = http
                    .post(format!("{base}/v1/sessions"))
                    .bearer_auth(ADMIN_TOKEN)
                    .json(&serde_json::json!({ "sub": sub }))
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                let v: serde_json::Value = r.json().await.map_err(|e| e.to_string())?;
                Ok::<_, String>((
                    v["access_token"].as_str().unwrap_or_default().to_string(),
                    v["session_id"].as_str().unwrap_or_default().to_string(),
                ))
            }
        })
        .buffered(64)
        .collect::<Vec<_>>()
        .await;
    for c in created {
        let (t, s) = c?;
        tokens.push(t);
        sids.push(s);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss0 = vm_kib(pid, "VmRSS:");

    // the sockets, each read by a task that records its close
    let closed: Closed = Arc::new(Mutex::new(vec![None; n]));
    let opened = Instant::now();
    let conns = futures::stream::iter(tokens.iter().enumerate())
        .map(|(i, t)| {
            let (url, closed) = (ws_url.clone(), closed.clone());
            let proto = format!("veto.v1, veto.bearer.{t}");
            async move {
                let mut req = url.into_client_request().map_err(|e| e.to_string())?;
                req.headers_mut().insert(
                    "sec-websocket-protocol",
                    proto.parse().map_err(|_| "header".to_string())?,
                );
                let (mut ws, _) = tokio_tungstenite::connect_async(req)
                    .await
                    .map_err(|e| format!("socket {i}: {e}"))?;
                tokio::spawn(async move {
                    while let Some(m) = ws.next().await {
                        match m {
                            Ok(Message::Close(f)) => {
                                let code = f.map(|f| u16::from(f.code)).unwrap_or(0);
                                closed.lock().await[i] = Some((Instant::now(), code));
                                break;
                            }
                            Ok(_) => {}
                            Err(_) => break,
                        }
                    }
                });
                Ok::<_, String>(())
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    if let Some(Err(e)) = conns.into_iter().find(Result::is_err) {
        return Err(e);
    }
    let open_took = opened.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss1 = vm_kib(pid, "VmRSS:");

    // the bus view of every event (core NATS, as the fast path sees it)
    let client = rig.topo.client("us").await;
    let mut sub = client
        .subscribe("veto.revocations.*.ev.>")
        .await
        .map_err(|e| e.to_string())?;
    client.flush().await.map_err(|e| e.to_string())?;
    // stamped on arrival, by a task of its own (not when the request's answer is back)
    let (stamp_tx, mut events) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    tokio::spawn(async move {
        while sub.next().await.is_some() {
            if stamp_tx.send(Instant::now()).is_err() {
                break;
            }
        }
    });
    let revoke = |body: serde_json::Value| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            http.post(format!("{base}/v1/revocations"))
                .bearer_auth(ADMIN_TOKEN)
                .json(&body)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .map_err(|e| e.to_string())
        }
    };

    // single sockets, one at a time
    let mut prop = Vec::new();
    let mut push = Vec::new();
    let mut over = Vec::new();
    for j in 0..singles {
        let i = victims + j;
        // stamps of earlier events (every revocation is published at each region's origin)
        tokio::time::sleep(Duration::from_millis(20)).await;
        while events.try_recv().is_ok() {}
        let t0 = Instant::now();
        let st = revoke(serde_json::json!({"kind": "session", "id": sids[i]})).await?;
        if st != 202 {
            return Err(format!("revocation answered {st}"));
        }
        let t_ev = tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .map_err(|_| "no event on the bus".to_string())?
            .ok_or("the bus subscription ended")?;
        let deadline = Instant::now() + Duration::from_secs(5);
        let t_close = loop {
            if let Some((at, _)) = closed.lock().await[i] {
                break at;
            }
            if Instant::now() > deadline {
                return Err(format!("socket {i} not closed"));
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        };
        prop.push(t_ev.duration_since(t0).as_secs_f64() * 1e6);
        push.push(t_close.duration_since(t0).as_secs_f64() * 1e6);
        // signed: the authority's own feed may hear the event before this subscriber does
        over.push(
            (t_close.duration_since(t0).as_secs_f64() - t_ev.duration_since(t0).as_secs_f64())
                * 1e6,
        );
    }

    // fan-out: one subject revocation, `victims` sockets
    tokio::time::sleep(Duration::from_millis(20)).await;
    while events.try_recv().is_ok() {}
    let t0 = Instant::now();
    let st = revoke(serde_json::json!({"kind": "subject", "id": "victim"})).await?;
    if st != 202 {
        return Err(format!("subject revocation answered {st}"));
    }
    let t_ev = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .ok()
        .flatten()
        .unwrap_or_else(Instant::now);
    let deadline = Instant::now() + Duration::from_secs(20);
    let last = loop {
        let c = closed.lock().await;
        let done: Vec<Instant> = c[..victims]
            .iter()
            .filter_map(|x| x.map(|(at, _)| at))
            .collect();
        if done.len() == victims {
            break done.into_iter().max();
        }
        drop(c);
        if Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let c = closed.lock().await;
    let victims_4403 = c[..victims]
        .iter()
        .filter(|x| matches!(x, Some((_, 4403))))
        .count();
    let others_open = c[victims + singles..]
        .iter()
        .filter(|x| x.is_none())
        .count();
    drop(c);

    let per_socket = match (rss0, rss1) {
        (Some(a), Some(b)) if n > 0 => Some((b.saturating_sub(a)) as f64 / n as f64),
        _ => None,
    };
    let (p_prop, p_push, p_over) = (pct(&prop), pct(&push), pct(&over));
    let _ = writeln!(
        out,
        "\n## 4. Forced-logout push ({n} sockets on the home authority, {victims} of one subject)\n\n\
         {n} sockets opened in {:.1} s (64 at a time). Times on this process's monotonic clock from \
         the admin revocation request; \"bus\" = the event's arrival at a core NATS subscriber here \
         (the propagation of the same event, same run).\n\n\
         | single socket ({singles} revocations) | p50 ms | p90 ms | p99 ms | max ms |\n|---|---|---|---|---|\n\
         | request → event on the bus | {} | {} | {} | {} |\n\
         | request → socket closed (4403) | {} | {} | {} | {} |\n\
         | **event on the bus → socket closed** | {} | {} | {} | {} |\n",
        open_took.as_secs_f64(),
        ms(p_prop.p50), ms(p_prop.p90), ms(p_prop.p99), ms(p_prop.max),
        ms(p_push.p50), ms(p_push.p90), ms(p_push.p99), ms(p_push.max),
        ms(p_over.p50), ms(p_over.p90), ms(p_over.p99), ms(p_over.max),
    );
    let over_ok = p_over.p99 / 1000.0 <= TARGET_OVER_PROPAGATION_MS;
    let _ = writeln!(
        out,
        "- push over propagation, p99: {} ms — target ≤ {TARGET_OVER_PROPAGATION_MS} ms: {}",
        ms(p_over.p99),
        verdict(over_ok)
    );
    match last {
        Some(last) => {
            let _ = writeln!(
                out,
                "- fan-out: subject revocation → event on the bus {:.2} ms; → last of {victims} sockets closed {:.2} ms; \
                 **event → last close {:.2} ms**; {victims_4403}/{victims} closed with 4403; {others_open}/{} other sockets still open",
                t_ev.duration_since(t0).as_secs_f64() * 1e3,
                last.duration_since(t0).as_secs_f64() * 1e3,
                (last.duration_since(t0).as_secs_f64() - t_ev.duration_since(t0).as_secs_f64()) * 1e3,
                n - victims - singles,
            );
        }
        None => {
            let _ = writeln!(out, "- fan-out: not every victim socket closed within 20 s");
        }
    }
    let kib = per_socket;
    let _ = writeln!(
        out,
        "- authority VmRSS with {n} sessions and no socket {} KiB, with {n} idle sockets {} KiB: **{} KiB per socket** — target ≤ {TARGET_KIB_PER_SOCKET} KiB: {}",
        rss0.map(|v| v.to_string()).unwrap_or_else(|| "?".into()),
        rss1.map(|v| v.to_string()).unwrap_or_else(|| "?".into()),
        kib.map(|k| format!("{k:.1}")).unwrap_or_else(|| "?".into()),
        verdict(kib.is_some_and(|k| k <= TARGET_KIB_PER_SOCKET)),
    );
    let mut csv = String::from("kind,request_to_bus_us,request_to_close_us,bus_to_close_us\n");
    for k in 0..prop.len() {
        let _ = writeln!(csv, "single,{:.0},{:.0},{:.0}", prop[k], push[k], over[k]);
    }
    write_out("push.csv", &csv);
    Ok(())
}
