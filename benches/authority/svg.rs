//! A tiny self-contained SVG: empirical CDFs on a log time axis (no plotting dependency).

use std::fmt::Write as _;

const COLORS: [&str; 8] = [
    "#d62728", "#ff7f0e", "#7f7f7f", "#bcbd22", "#1f77b4", "#17becf", "#2ca02c", "#9467bd",
];

/// `curves`: (label, samples in µs). X: latency in ms, log10; Y: fraction ≤ x.
pub fn cdf(title: &str, curves: &[(String, Vec<f64>)]) -> String {
    let (w, h, left, right, top, bottom) = (900.0, 520.0, 70.0, 250.0, 40.0, 50.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let all = curves.iter().flat_map(|(_, v)| v.iter().copied());
    let lo = all.clone().fold(f64::INFINITY, f64::min).max(1.0);
    let hi = all.fold(0.0_f64, f64::max).max(lo * 10.0);
    let (l0, l1) = ((lo / 1000.0).log10().floor(), (hi / 1000.0).log10().ceil());
    let x = |us: f64| left + pw * (((us / 1000.0).log10() - l0) / (l1 - l0)).clamp(0.0, 1.0);
    let y = |f: f64| top + ph * (1.0 - f);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">{title}</text>"#,
        left + pw / 2.0
    );
    // grid: decades and their 2x/5x, fractions by 0.1
    let mut d = l0;
    while d <= l1 {
        for m in [1.0, 2.0, 5.0] {
            let v = m * 10f64.powf(d);
            let lv = v.log10();
            if lv > l1 + 1e-9 {
                continue;
            }
            let px = left + pw * (lv - l0) / (l1 - l0);
            let stroke = if m == 1.0 { "#bbb" } else { "#eee" };
            let _ = writeln!(
                s,
                r#"<line x1="{px:.1}" y1="{top}" x2="{px:.1}" y2="{}" stroke="{stroke}"/>"#,
                top + ph
            );
            let _ = writeln!(
                s,
                r#"<text x="{px:.1}" y="{}" text-anchor="middle">{}</text>"#,
                top + ph + 16.0,
                fmt_ms(v)
            );
        }
        d += 1.0;
    }
    for i in 0..=10 {
        let f = i as f64 / 10.0;
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{py:.1}" x2="{}" y2="{py:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{f:.1}</text>"##,
            left + pw,
            left - 6.0,
            y(f) + 4.0,
            py = y(f)
        );
    }
    let _ = writeln!(
        s,
        r#"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">latency, ms (log scale)</text>"#,
        left + pw / 2.0,
        h - 12.0
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{}" transform="rotate(-90 16 {})" text-anchor="middle">fraction of requests ≤ x</text>"#,
        top + ph / 2.0,
        top + ph / 2.0
    );
    for (i, (label, v)) in curves.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut v = v.clone();
        v.sort_by(f64::total_cmp);
        // at most ~400 points per curve
        let step = (v.len() / 400).max(1);
        let mut pts = String::new();
        for (j, us) in v.iter().enumerate() {
            if j % step == 0 || j + 1 == v.len() {
                let _ = write!(
                    pts,
                    "{:.1},{:.1} ",
                    x(*us),
                    y((j + 1) as f64 / v.len() as f64)
                );
            }
        }
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="1.6" points="{pts}"/>"#
        );
        let ly = top + 14.0 + 18.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="3"/><text x="{}" y="{}">{label}</text>"#,
            left + pw + 12.0,
            left + pw + 36.0,
            left + pw + 42.0,
            ly + 4.0
        );
    }
    s.push_str("</svg>\n");
    s
}

fn fmt_ms(v: f64) -> String {
    if v >= 1.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').to_string()
    }
}
