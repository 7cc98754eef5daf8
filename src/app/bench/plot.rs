//! SVG charts for the report (plotters, SVG backend only): line panels and bar charts.

use std::path::Path;

use plotters::prelude::*;

use super::BenchError;

/// One chart: named series of (x, y) points drawn as lines with markers.
pub struct Panel {
    /// Chart title.
    pub title: String,
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// (name, points) per series.
    pub series: Vec<(String, Vec<(f64, f64)>)>,
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn err(path: &Path, e: impl std::fmt::Display) -> BenchError {
    BenchError::Measurement(format!("drawing {}: {e}", path.display()))
}

fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let lo = lo.min(0.0);
    if hi <= lo {
        (lo, lo + 1.0)
    } else {
        (lo, hi + (hi - lo) * 0.05)
    }
}

/// Draws `panels` side by side into one SVG at `path`.
pub fn panels(path: &Path, panels: &[Panel]) -> Result<(), BenchError> {
    let n = panels.len().max(1) as u32;
    let root = SVGBackend::new(path, (520 * n, 380)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(path, e))?;
    let areas = root.split_evenly((1, n as usize));
    for (panel, area) in panels.iter().zip(areas.iter()) {
        let pts = || panel.series.iter().flat_map(|(_, p)| p.iter());
        let (x0, x1) = range(pts().map(|p| p.0));
        let (y0, y1) = range(pts().map(|p| p.1));
        let mut chart = ChartBuilder::on(area)
            .caption(&panel.title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| err(path, e))?;
        chart
            .configure_mesh()
            .x_desc(&panel.x_label)
            .y_desc(&panel.y_label)
            .draw()
            .map_err(|e| err(path, e))?;
        for (i, (name, points)) in panel.series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    color.stroke_width(2),
                ))
                .map_err(|e| err(path, e))?
                .label(name.as_str())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color));
            if points.len() <= 30 {
                chart
                    .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                    .map_err(|e| err(path, e))?;
            }
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerRight)
            .draw()
            .map_err(|e| err(path, e))?;
    }
    root.present().map_err(|e| err(path, e))
}

/// Draws a bar chart of named values into an SVG at `path`.
pub fn bars(
    path: &Path,
    title: &str,
    y_label: &str,
    bars: &[(String, f64)],
) -> Result<(), BenchError> {
    let width = (120 * bars.len() as u32).clamp(480, 1400);
    let root = SVGBackend::new(path, (width, 400)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(path, e))?;
    let (_, y1) = range(bars.iter().map(|b| b.1));
    let n = bars.len().max(1);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(60)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..n as f64, 0f64..y1)
        .map_err(|e| err(path, e))?;
    let names: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            // Label only the centre of each bar.
            if (x - x.floor() - 0.5).abs() < 1e-6 && i < names.len() {
                names[i].clone()
            } else {
                String::new()
            }
        })
        .y_desc(y_label)
        .draw()
        .map_err(|e| err(path, e))?;
    // One colour per group (the label's first word: the peer), in order of appearance.
    let mut groups: Vec<&str> = Vec::new();
    chart
        .draw_series(bars.iter().enumerate().map(|(i, (name, v))| {
            let g = name.split(' ').next().unwrap_or("");
            let k = groups.iter().position(|x| *x == g).unwrap_or_else(|| {
                groups.push(g);
                groups.len() - 1
            });
            let color = COLORS[k % COLORS.len()];
            Rectangle::new(
                [(i as f64 + 0.15, 0.0), (i as f64 + 0.85, *v)],
                color.filled(),
            )
        }))
        .map_err(|e| err(path, e))?;
    root.present().map_err(|e| err(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_both_kinds() {
        let dir = std::env::temp_dir().join(format!("hb-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("lines.svg");
        panels(
            &p,
            &[Panel {
                title: "t".into(),
                x_label: "x".into(),
                y_label: "y".into(),
                series: vec![("a".into(), vec![(0.0, 1.0), (1.0, 2.0)])],
            }],
        )
        .unwrap();
        assert!(std::fs::read_to_string(&p).unwrap().contains("<svg"));
        let b = dir.join("bars.svg");
        bars(&b, "t", "y", &[("one".into(), 3.0), ("two".into(), 5.0)]).unwrap();
        assert!(std::fs::read_to_string(&b).unwrap().contains("one"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
