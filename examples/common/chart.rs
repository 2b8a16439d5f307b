//! Training-curve charts for the examples, drawn with `plotters` (SVG backend, no system
//! fonts needed: text is written as SVG `<text>`).
//!
//! `write_svg(path, title, panels)` draws one panel per `Panel` side by side; each panel has
//! one or more named series of `(x, y)` points, its own y-range, axes and a legend.

use std::path::Path;

use plotters::prelude::*;

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

const COLORS: [RGBColor; 6] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
];

fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(1e-6);
    (lo - pad, hi + pad)
}

/// A panel of the metrics `keys` over the steps of a training history (a key missing at a step
/// leaves a gap).
pub fn history_panel(
    title: &str,
    history: &[(usize, std::collections::BTreeMap<String, f64>)],
    keys: &[&str],
) -> Panel {
    Panel {
        title: title.to_string(),
        x_label: "step".into(),
        series: keys
            .iter()
            .map(|key| Series {
                name: key.to_string(),
                points: history
                    .iter()
                    .filter_map(|(step, m)| m.get(*key).map(|v| (*step as f64, *v)))
                    .collect(),
            })
            .collect(),
    }
}

/// Writes the panels as one SVG (creating the parent folder).
pub fn write_svg(path: &Path, title: &str, panels: &[Panel]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    draw(path, title, panels).map_err(|e| std::io::Error::other(e.to_string()))
}

fn draw(path: &Path, title: &str, panels: &[Panel]) -> Result<(), Box<dyn std::error::Error>> {
    let width = 440 * panels.len().max(1) as u32;
    let root = SVGBackend::new(path, (width, 340)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 18))?;
    for (area, panel) in root
        .split_evenly((1, panels.len().max(1)))
        .iter()
        .zip(panels)
    {
        let points = || panel.series.iter().flat_map(|s| s.points.iter());
        let (x0, x1) = range(points().map(|p| p.0));
        let (y0, y1) = range(points().map(|p| p.1));
        let mut chart = ChartBuilder::on(area)
            .caption(&panel.title, ("sans-serif", 15))
            .margin(12)
            .x_label_area_size(38)
            .y_label_area_size(52)
            .build_cartesian_2d(x0..x1, y0..y1)?;
        chart
            .configure_mesh()
            .x_desc(&panel.x_label)
            .x_labels(6)
            .y_labels(6)
            .light_line_style(WHITE.mix(0.0))
            .draw()?;
        for (i, s) in panel.series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            chart
                .draw_series(LineSeries::new(
                    s.points.iter().copied(),
                    color.stroke_width(2),
                ))?
                .label(&s.name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .draw()?;
    }
    root.present()?;
    Ok(())
}
