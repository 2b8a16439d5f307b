//! A dependency-free SVG line chart for the examples' training curves.
//!
//! `write_svg(path, title, panels)` draws one panel per `Panel` side by side; each panel has
//! one or more named series of `(x, y)` points, its own y-range, axes with tick labels, and a
//! legend.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::path::Path;

/// One named line.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// One chart panel.
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub series: Vec<Series>,
}

const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];
const W: f64 = 420.0;
const H: f64 = 300.0;
const M_LEFT: f64 = 60.0;
const M_RIGHT: f64 = 15.0;
const M_TOP: f64 = 40.0;
const M_BOTTOM: f64 = 45.0;

fn ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    (0..=n)
        .map(|i| lo + (hi - lo) * i as f64 / n as f64)
        .collect()
}

fn fmt_tick(v: f64) -> String {
    if v.abs() >= 1000.0 || (v != 0.0 && v.abs() < 0.01) {
        format!("{v:.1e}")
    } else if v.abs() >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// Writes the chart; returns the path written.
pub fn write_svg(path: &Path, title: &str, panels: &[Panel]) -> std::io::Result<()> {
    let total_w = W * panels.len() as f64;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{total_w}" height="{}" font-family="sans-serif" font-size="11">"#,
        H + 30.0
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="18" font-size="15" text-anchor="middle">{title}</text>"#,
        total_w / 2.0
    );
    for (p, panel) in panels.iter().enumerate() {
        let ox = p as f64 * W;
        let oy = 20.0;
        let pts: Vec<(f64, f64)> = panel
            .series
            .iter()
            .flat_map(|s| s.points.iter().copied())
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        if pts.is_empty() {
            continue;
        }
        let (mut x0, mut x1) = (f64::INFINITY, f64::NEG_INFINITY);
        let (mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY);
        for &(x, y) in &pts {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
        if x1 <= x0 {
            x1 = x0 + 1.0;
        }
        if y1 <= y0 {
            y1 = y0 + 1.0;
        }
        let pad = 0.05 * (y1 - y0);
        let (y0, y1) = (y0 - pad, y1 + pad);
        let px = |x: f64| ox + M_LEFT + (x - x0) / (x1 - x0) * (W - M_LEFT - M_RIGHT);
        let py = |y: f64| oy + M_TOP + (1.0 - (y - y0) / (y1 - y0)) * (H - M_TOP - M_BOTTOM);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" font-size="13" text-anchor="middle">{}</text>"#,
            ox + W / 2.0,
            oy + 22.0,
            panel.title
        );
        let _ = writeln!(
            s,
            r##"<rect x="{}" y="{}" width="{}" height="{}" fill="none" stroke="#444"/>"##,
            px(x0),
            py(y1),
            px(x1) - px(x0),
            py(y0) - py(y1)
        );
        for t in ticks(y0, y1, 5) {
            let _ = writeln!(
                s,
                r##"<line x1="{}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
                px(x0),
                px(x1),
                px(x0) - 4.0,
                py(t) + 4.0,
                fmt_tick(t),
                y = py(t)
            );
        }
        for t in ticks(x0, x1, 4) {
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
                px(t),
                py(y0) + 15.0,
                fmt_tick(t)
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            px((x0 + x1) / 2.0),
            py(y0) + 32.0,
            panel.x_label
        );
        let longest = panel.series.iter().map(|s| s.name.len()).max().unwrap_or(0) as f64;
        let _ = writeln!(
            s,
            r##"<rect x="{}" y="{}" width="{}" height="{}" fill="white" fill-opacity="0.85" stroke="#ccc"/>"##,
            px(x0) + 4.0,
            py(y1) + 4.0,
            30.0 + 6.5 * longest,
            14.0 * panel.series.len() as f64 + 6.0
        );
        for (i, series) in panel.series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let path: Vec<String> = series
                .points
                .iter()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
                .collect();
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{color}" stroke-width="1.8" points="{}"/>"#,
                path.join(" ")
            );
            let ly = py(y1) + 14.0 + 14.0 * i as f64;
            let _ = writeln!(
                s,
                r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="2"/><text x="{}" y="{}">{}</text>"#,
                px(x0) + 8.0,
                px(x0) + 24.0,
                px(x0) + 28.0,
                ly + 4.0,
                series.name
            );
        }
    }
    s.push_str("</svg>\n");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, s)
}
