//! Part 2: catch-up after a partition, with and without the catch-up reader.

use crate::arrivals::{self, Tally, STATE};
use crate::inproc::InProc;
use crate::topology_support::{stream, LocalTopology};
use crate::{env_usize, loadavg, publish_bulk, secs, stream_messages, verdict, CpuSample, REGIONS};
use async_nats::jetstream;
use futures::StreamExt;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

struct Round {
    cut: &'static str,
    origin: &'static str,
}

pub async fn part(
    topo: &mut LocalTopology,
    sidecars: &BTreeMap<String, InProc>,
    report: &mut String,
) -> Result<(), String> {
    let n = env_usize("BENCH_PARTITION_EVENTS", 100_000);
    let inflight = env_usize("BENCH_INFLIGHT", 1000);
    let rounds = [
        Round {
            cut: "eu",
            origin: "us",
        },
        Round {
            cut: "us",
            origin: "eu",
        },
        Round {
            cut: "ap",
            origin: "us",
        },
        // the cut-off region is the origin: the others catch up with it
        Round {
            cut: "eu",
            origin: "eu",
        },
    ];
    let _ = writeln!(
        report,
        "\n== 2. catch-up after a partition: {n} revocations published while one hub is down; \
         time from heal (hub process restarted) until the cut-off side holds them all \
         (target <= 2 s)"
    );
    let _ = writeln!(
        report,
        "   'catch-up' = sidecar with fast path and catch-up reader (catchup_after default 3s);\n   \
         'sourcing' = durable-only sidecar with catchup_after = 1h (stream sourcing alone)"
    );
    let mut clients = BTreeMap::new();
    for r in REGIONS {
        clients.insert(r, topo.client(r).await);
    }
    for (k, round) in rounds.iter().enumerate() {
        let receivers: Vec<&str> = if round.cut == round.origin {
            REGIONS
                .iter()
                .copied()
                .filter(|r| *r != round.cut)
                .collect()
        } else {
            vec![round.cut]
        };
        let js_of = |r: &str| jetstream::new(clients[r].clone());
        let origin_js = js_of(round.origin);
        let origin_before = stream_messages(&origin_js, &stream(round.origin))
            .await
            .ok_or("origin stream info")?;
        let mut stream_before = BTreeMap::new();
        for r in &receivers {
            stream_before.insert(
                *r,
                stream_messages(&js_of(r), &stream(r))
                    .await
                    .ok_or("stream info")?,
            );
        }
        let watched: Vec<&InProc> = receivers
            .iter()
            .flat_map(|r| {
                [
                    &sidecars[&format!("sc/{r}/fast")],
                    &sidecars[&format!("sc/{r}/durable")],
                ]
            })
            .collect();
        let len_before: Vec<usize> = watched.iter().map(|s| s.revoked.len()).collect();
        let reads_before: Vec<u64> = watched
            .iter()
            .map(|s| s.catchup_reads(round.origin))
            .collect();

        // cut
        let cut_at = Instant::now();
        topo.kill(&format!("{}-hub", round.cut));
        let (took, ok, failed) = publish_bulk(
            &origin_js,
            round.origin,
            &format!("p{k}-{}", round.origin),
            n,
            inflight,
            Duration::from_secs(60),
        )
        .await;
        let origin_after = stream_messages(&origin_js, &stream(round.origin))
            .await
            .ok_or("origin stream info")?;
        let delta = (origin_after - origin_before) as usize;
        // keep the partition long enough that the source is seen lagging (catchup_after 3s
        // + the reader's 200 ms poll)
        let min_cut = Duration::from_secs(5);
        if cut_at.elapsed() < min_cut {
            tokio::time::sleep(min_cut - cut_at.elapsed()).await;
        }
        let partition = cut_at.elapsed();
        STATE.counts.lock().clear();
        arrivals::set_mode(arrivals::COUNT);

        // A link probe: a responder on a receiving side, a requester on the other side.
        let probe_subject = format!("bench.probe.{k}");
        let responder = {
            let c = clients[receivers[0]].clone();
            let mut sub = c
                .subscribe(probe_subject.clone())
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(async move {
                while let Some(m) = sub.next().await {
                    if let Some(reply) = m.reply {
                        let _ = c.publish(reply, "pong".into()).await;
                    }
                }
            })
        };
        let requester_region = if round.cut == round.origin {
            round.origin
        } else {
            REGIONS
                .iter()
                .copied()
                .find(|r| *r != round.cut)
                .unwrap_or("us")
        };

        // heal
        let cpu = CpuSample::now();
        let healed = Instant::now();
        topo.start_server(&format!("{}-hub", round.cut));
        let prober = {
            let c = clients[requester_region].clone();
            let subject = probe_subject.clone();
            tokio::spawn(async move {
                while healed.elapsed() < Duration::from_secs(30) {
                    let r = tokio::time::timeout(
                        Duration::from_millis(100),
                        c.request(subject.clone(), "ping".into()),
                    )
                    .await;
                    if matches!(r, Ok(Ok(_))) {
                        return Some(healed.elapsed());
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                None
            })
        };
        let mut done: Vec<Option<Duration>> = vec![None; watched.len()];
        let mut stream_done: BTreeMap<&str, Option<Duration>> =
            receivers.iter().map(|r| (*r, None)).collect();
        let mut last_stream_poll = Instant::now() - Duration::from_secs(1);
        let limit = Duration::from_secs(30);
        while healed.elapsed() < limit {
            for (i, s) in watched.iter().enumerate() {
                if done[i].is_none() && s.revoked.len() >= len_before[i] + delta {
                    done[i] = Some(healed.elapsed());
                }
            }
            if last_stream_poll.elapsed() >= Duration::from_millis(25) {
                last_stream_poll = Instant::now();
                for r in &receivers {
                    if stream_done[r].is_none() {
                        if let Some(m) = stream_messages(&js_of(r), &stream(r)).await {
                            if m >= stream_before[r] + delta as u64 {
                                stream_done.insert(r, Some(healed.elapsed()));
                            }
                        }
                    }
                }
            }
            if done.iter().all(Option::is_some) && stream_done.values().all(Option::is_some) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let heal_cpu = cpu.busy();
        let link = prober.await.ok().flatten();
        responder.abort();
        arrivals::set_mode(arrivals::OFF);

        let _ = writeln!(
            report,
            "\n   round {}: cut {} (hub killed), {} published in {} ({:.1} s, {:.0}/s, acked {ok}, \
             failed {failed}, stored {delta}); partition {:.1} s; load avg {}",
            k + 1,
            round.cut,
            n,
            round.origin,
            took.as_secs_f64(),
            ok as f64 / took.as_secs_f64(),
            partition.as_secs_f64(),
            loadavg()
        );
        let _ = writeln!(
            report,
            "     CPU busy after heal {:.0}% system-wide; heal -> link back ({requester_region} -> {} \
             core request answered): {}",
            heal_cpu * 100.0,
            receivers[0],
            secs(link)
        );
        for r in &receivers {
            let _ = writeln!(
                report,
                "     heal -> {r}'s stream holds all {delta} (sourcing): {}",
                secs(stream_done[r])
            );
        }
        let counts: Vec<((String, &'static str), Tally)> = STATE
            .counts
            .lock()
            .iter()
            .map(|(k, t)| (k.clone(), t.clone()))
            .collect();
        for (i, s) in watched.iter().enumerate() {
            let kind = if s.label.ends_with("/fast") {
                "catch-up"
            } else {
                "sourcing"
            };
            let t = done[i];
            let got = s.revoked.len() - len_before[i];
            let reads = s.catchup_reads(round.origin) - reads_before[i];
            let paths: Vec<String> = counts
                .iter()
                .filter(|((who, _), _)| *who == s.label)
                .map(|((_, p), t)| {
                    format!(
                        "{p} {} ({:.3}-{:.3} s)",
                        t.count,
                        t.first.saturating_duration_since(healed).as_secs_f64(),
                        t.last.saturating_duration_since(healed).as_secs_f64()
                    )
                })
                .collect();
            let _ = writeln!(
                report,
                "     heal -> {:<16} [{kind}] holds all: {:>9}  {}  ({got}/{delta}; direct reads \
                 of {}: {reads}; applied by path: {})",
                s.label,
                secs(t),
                if kind == "catch-up" {
                    verdict(t.is_some_and(|t| t <= Duration::from_secs(2)))
                } else {
                    "(reference)"
                },
                round.origin,
                paths.join(", ")
            );
        }
        // settle before the next round: every sidecar holds everything, links are up
        let settle = Instant::now();
        let all: Vec<&InProc> = sidecars.values().collect();
        let want: Vec<usize> = all
            .iter()
            .map(|s| {
                if receivers
                    .iter()
                    .any(|r| s.label.starts_with(&format!("sc/{r}/")))
                {
                    let i = watched.iter().position(|w| w.label == s.label).unwrap_or(0);
                    len_before[i] + delta
                } else {
                    0
                }
            })
            .collect();
        while settle.elapsed() < Duration::from_secs(20)
            && all.iter().zip(&want).any(|(s, w)| s.revoked.len() < *w)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        topo.wait_linked(Duration::from_secs(20)).await;
    }
    Ok(())
}
