//! The configuration the docs show works: every TOML snippet in README.md, deploy/ and k8s/
//! (Markdown ```toml blocks and `veto.toml` ConfigMap entries) passes `veto check-config`, and
//! a sidecar started from the deploy/nats snippet becomes ready against the real topology.

mod support;
#[path = "support/topology.rs"]
mod topology_support;

use std::path::{Path, PathBuf};
use std::time::Duration;
use support::*;
use topology_support::LocalTopology;
use veto::bus::topology::NatsUser;
use veto::token::Alg;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Files under `dir` (recursively) whose name ends in one of `exts`.
fn files(dir: &Path, exts: &[&str], out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = rd.filter_map(Result::ok).map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            files(&p, exts, out);
        } else if exts.iter().any(|e| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().ends_with(e))
        }) {
            out.push(p);
        }
    }
}

/// The ```toml blocks of a Markdown text, with their 1-based starting line.
fn markdown_toml(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let fence = line.trim_start();
        match &mut current {
            None if fence.starts_with("```toml") => current = Some((i + 1, String::new())),
            Some(_) if fence.starts_with("```") => out.extend(current.take()),
            Some((_, body)) => {
                body.push_str(line);
                body.push('\n');
            }
            None => {}
        }
    }
    out
}

/// The `veto.toml: |` block scalars of a YAML text (ConfigMaps), dedented.
fn yaml_veto_toml(text: &str) -> Vec<(usize, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i];
        if l.trim() == "veto.toml: |" {
            let key_indent = indent(l);
            let start = i + 1;
            let mut body = Vec::new();
            i += 1;
            while i < lines.len() && (lines[i].trim().is_empty() || indent(lines[i]) > key_indent) {
                body.push(lines[i]);
                i += 1;
            }
            let strip = body
                .iter()
                .filter(|l| !l.trim().is_empty())
                .map(|l| indent(l))
                .min()
                .unwrap_or(0);
            let text: String = body
                .iter()
                .map(|l| format!("{}\n", l.get(strip..).unwrap_or("")))
                .collect();
            out.push((start + 1, text));
            continue;
        }
        i += 1;
    }
    out
}

/// Every TOML config snippet the docs and manifests ship, as (where, text).
fn snippets() -> Vec<(String, String)> {
    let root = repo();
    let mut paths = vec![root.join("README.md")];
    files(&root.join("deploy"), &[".md"], &mut paths);
    files(&root.join("k8s"), &[".md"], &mut paths);
    let mut yaml = Vec::new();
    files(&root.join("k8s"), &[".yaml", ".yml"], &mut yaml);
    files(&root.join("deploy"), &[".yaml", ".yml"], &mut yaml);
    let mut out = Vec::new();
    for (p, is_md) in paths
        .iter()
        .map(|p| (p, true))
        .chain(yaml.iter().map(|p| (p, false)))
    {
        let text = std::fs::read_to_string(p).expect("read doc");
        let found = if is_md {
            markdown_toml(&text)
        } else {
            yaml_veto_toml(&text)
        };
        let rel = p.strip_prefix(&root).unwrap_or(p).display().to_string();
        out.extend(
            found
                .into_iter()
                .map(|(line, t)| (format!("{rel}:{line}"), t)),
        );
    }
    out
}

#[test]
fn extraction_finds_blocks_in_both_formats() {
    let md = "x\n```toml\na = 1\n```\n```sh\nb\n```\n  ```toml\nc = 2\n  ```\n";
    assert_eq!(
        markdown_toml(md),
        vec![(2, "a = 1\n".to_string()), (8, "c = 2\n".to_string())]
    );
    let yaml = "data:\n  veto.toml: |\n    [a]\n      b = 1\n\n    c = 2\n  other: x\n";
    assert_eq!(
        yaml_veto_toml(yaml),
        vec![(3, "[a]\n  b = 1\n\nc = 2\n".to_string())]
    );
}

const AUTHORITY_BASE: &str = "[nats]\nurl = \"nats://127.0.0.1:4222\"\nregion = \"us\"\n\
    [authority]\nissuer = \"https://auth.example.com\"\naudiences = [\"api\"]\n\
    keys_dir = \"/keys\"\nadmin_token_file = \"/admin\"\nrefresh_key_file = \"/rt\"\n";

#[test]
fn every_shipped_toml_snippet_passes_check_config() {
    let all = snippets();
    // The deploy/nats sidecar snippet at least: a found-nothing run must not pass. (k8s/ keeps
    // its configs as kustomize files completed by the overlays' VETO__ environment;
    // scripts/deploy_checks.py runs `veto check-config` on what each container sees.)
    assert!(
        all.iter()
            .any(|(w, _)| w.starts_with("deploy/nats/README.md")),
        "snippets not found: {:?}",
        all.iter().map(|(w, _)| w).collect::<Vec<_>>()
    );
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for (i, (where_, text)) in all.iter().enumerate() {
        let p = dir.path().join(format!("snippet-{i}.toml"));
        // a fragment of the authority's section (an upstream IdP) is checked inside a
        // minimal authority config, so its keys are still validated
        let text = if text.contains("[[authority.") && !text.contains("[authority]") {
            format!("{AUTHORITY_BASE}{text}")
        } else {
            text.clone()
        };
        std::fs::write(&p, &text).unwrap();
        let (code, out, err) = veto(&["check-config", "--config", &p.display().to_string()]);
        if code != 0 {
            failures.push(format!("{where_}: exit {code}\n{out}{err}\n{text}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n---\n"));
}

#[test]
fn a_stream_name_with_a_region_suffix_is_refused_naming_the_key() {
    let (code, _, err) = check_config(
        "[[issuers]]\nissuer = \"https://a\"\naudiences = [\"api\"]\njwks_file = \"/dev/null\"\n\
         [nats]\nurl = \"nats://127.0.0.1:4222\"\nregion = \"us\"\nstream = \"VETO_REVOCATIONS_us\"\n",
    );
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("nats.stream") && err.contains("VETO_REVOCATIONS_us_us"),
        "{err}"
    );
}

/// The deploy/nats README's sidecar snippet, as written (only the addresses are this test's:
/// the topology runs on free ports, the issuer's keys are a local file), starts a sidecar that
/// becomes ready against the streams `veto nats provision` made, and enforces a revocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deploy_snippet_starts_a_ready_sidecar_against_the_topology() {
    let (_, snippet) = snippets()
        .into_iter()
        .find(|(w, t)| w.starts_with("deploy/nats/README.md") && t.contains("[nats]"))
        .expect("deploy/nats/README.md has a sidecar snippet");
    let topo = LocalTopology::start(&["us", "eu", "ap"]);
    topo.wait_linked(Duration::from_secs(20)).await;
    topo.provision_all().await;
    let _beats: Vec<Proc> = ["us", "eu", "ap"]
        .iter()
        .map(|r| topo.heartbeat(r))
        .collect();

    let issuer = Issuer::new(Alg::ES256);
    let mut replaced = (0, 0, 0, 0);
    let config: String = snippet
        .lines()
        .map(|l| {
            let key = l.split('=').next().unwrap_or("").trim();
            match key {
                "url" => {
                    replaced.0 += 1;
                    format!("url = \"{}\"", topo.js_url("us"))
                }
                "jwks_url" => {
                    replaced.1 += 1;
                    format!("jwks_file = \"{}\"", issuer.jwks_path().display())
                }
                "issuer" => {
                    replaced.2 += 1;
                    format!("issuer = \"{}\"", issuer.iss)
                }
                "password_file" => {
                    replaced.3 += 1;
                    format!(
                        "password_file = \"{}\"",
                        topo.password_file(NatsUser::Sidecar).display()
                    )
                }
                _ => l.to_string(),
            }
        })
        .map(|l| l + "\n")
        .collect();
    assert_eq!(
        replaced,
        (1, 1, 1, 1),
        "the snippet's shape changed:\n{snippet}"
    );
    let sidecar = Sidecar::start(&config);
    let ready = eventually(Duration::from_secs(15), || sidecar.ready()).await;
    assert!(
        ready.is_some(),
        "a sidecar configured from the deploy snippet never became ready:\n{config}\n{}",
        sidecar.log()
    );
    let token = format!("Bearer {}", issuer.mint("u", "s-doc"));
    let r = sidecar.check(Some(&token)).await;
    let status = r.status();
    assert_eq!(
        status,
        200,
        "{}\n{}",
        r.text().await.unwrap_or_default(),
        sidecar.log()
    );
    let (code, out, err) = veto(&[
        "revoke",
        "--session",
        "s-doc",
        "--nats",
        &topo.js_url("eu"),
        "--region",
        "eu",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let denied = eventually(Duration::from_secs(5), || async {
        sidecar.check(Some(&token)).await.status() == 401
    })
    .await;
    assert!(denied.is_some(), "revoked in eu, still allowed in us");
}

/// GitHub's anchor for a Markdown heading: lower case, punctuation dropped (but `-` and `_`),
/// spaces to `-`.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of every heading of a Markdown text (outside code blocks), with GitHub's `-1`,
/// `-2` suffixes for repeats.
fn anchors(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        }
        if fenced || !line.starts_with('#') {
            continue;
        }
        let base = anchor(line.trim_start_matches('#'));
        let n = out
            .iter()
            .filter(|a| {
                **a == base
                    || a.strip_prefix(&format!("{base}-"))
                        .is_some_and(|s| s.parse::<u32>().is_ok())
            })
            .count();
        out.push(if n == 0 { base } else { format!("{base}-{n}") });
    }
    out
}

#[test]
fn anchors_follow_github() {
    assert_eq!(
        anchors("# A b\n### VetoFeedStale\n```\n# not\n```\n## Exposure window under each `on_stale` policy\n## A b\n"),
        vec!["a-b", "vetofeedstale", "exposure-window-under-each-on_stale-policy", "a-b-1"]
    );
}

/// Every alert of deploy/prometheus/alerts.yaml has its `### <AlertName>` section in
/// docs/operations.md, every `runbook_url` points at an anchor that exists there, and every
/// in-page link of the guide resolves.
#[test]
fn every_alert_has_a_runbook_section() {
    let root = repo();
    let rules = std::fs::read_to_string(root.join("deploy/prometheus/alerts.yaml")).unwrap();
    let guide = std::fs::read_to_string(root.join("docs/operations.md")).unwrap();
    let have = anchors(&guide);
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(str::trim)
        .collect();
    assert!(alerts.len() >= 5, "alerts not found: {alerts:?}");
    let mut missing = Vec::new();
    for a in &alerts {
        if !guide.lines().any(|l| l.trim_end() == format!("### {a}")) {
            missing.push(format!("no `### {a}` section"));
        }
    }
    for l in rules.lines() {
        let Some(url) = l.trim().strip_prefix("runbook_url:") else {
            continue;
        };
        let url = url.trim().trim_matches('"').trim_matches('\'');
        match url.split_once("docs/operations.md#") {
            Some((_, frag)) if have.iter().any(|a| a == frag) => {}
            Some((_, frag)) => missing.push(format!("runbook_url {url}: no anchor #{frag}")),
            None => missing.push(format!("runbook_url {url}: not docs/operations.md#...")),
        }
    }
    for (i, _) in guide.match_indices("](#") {
        let frag: String = guide[i + 3..].chars().take_while(|c| *c != ')').collect();
        if !have.contains(&frag) {
            missing.push(format!("in-page link #{frag}: no such heading"));
        }
    }
    assert!(
        missing.is_empty(),
        "docs/operations.md:\n{}",
        missing.join("\n")
    );
}
