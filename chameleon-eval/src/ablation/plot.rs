//! The report's PNG plots: panels of lines with bands, drawn with plotters into an RGB buffer.
//!
//! A line is a variant's mean over its seeds and its band the seeds' min–max, so that a reader
//! sees at once whether two variants' seeds overlap. On a log axis the mean is geometric.

use std::path::Path;

use chameleon_train::monitor::scale::axis_label;
use plotters::prelude::*;

use super::report::{ReportError, err};

/// Line colours, one per variant (in grid order).
pub const COLORS: [RGBColor; 10] = [
    RGBColor(214, 39, 40),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// One variant in one panel: `(x, mean, min, max)` per point, already on the axis' scale.
#[derive(Debug, Clone)]
pub struct Band {
    /// Colour index.
    pub color: usize,
    /// Legend text.
    pub label: String,
    /// Points, in x order.
    pub points: Vec<(f64, f64, f64, f64)>,
    /// Draw a marker at each point (sparse x, e.g. learning rates).
    pub markers: bool,
}

/// One panel.
#[derive(Debug, Clone)]
pub struct Panel {
    /// Caption.
    pub title: String,
    /// x-axis description.
    pub x_desc: String,
    /// The x values are log₁₀ of the quantity.
    pub x_log: bool,
    /// The y values are log₁₀ of the quantity.
    pub y_log: bool,
    /// Values above this are drawn at it (on the axis' scale), so that a spike does not flatten
    /// the rest: the caption says so.
    pub y_max: Option<f64>,
    /// The lines.
    pub bands: Vec<Band>,
}

/// `(mean, min, max)` of `values` on a linear or (log₁₀) log scale; `None` if none is usable.
pub fn stats(values: &[f64], log: bool) -> Option<(f64, f64, f64)> {
    let v: Vec<f64> = values
        .iter()
        .filter_map(|&x| if log { (x > 0.0 && x.is_finite()).then(|| x.log10()) } else { x.is_finite().then_some(x) })
        .collect();
    if v.is_empty() {
        return None;
    }
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    Some((mean, v.iter().copied().fold(f64::INFINITY, f64::min), v.iter().copied().fold(f64::NEG_INFINITY, f64::max)))
}

/// Draws `panels` in a grid of `cols` columns into the PNG at `path`.
pub fn draw(path: &Path, panels: &[Panel], cols: usize) -> Result<(), ReportError> {
    register_font();
    let cols = cols.clamp(1, panels.len().max(1));
    let rows = panels.len().div_ceil(cols).max(1);
    let (pw, ph) = (520u32, 400u32);
    let (w, h) = (pw * cols as u32, ph * rows as u32);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    let drawn = (|| -> Result<(), Box<dyn std::error::Error + '_>> {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE)?;
        for (area, panel) in root.split_evenly((rows, cols)).iter().zip(panels) {
            draw_panel(area, panel)?;
        }
        root.present()?;
        Ok(())
    })();
    drawn.map_err(|e| err(path, format!("cannot draw: {e}")))?;
    // Plots are committed (docs/ablation/): the best deflate level makes them a third smaller.
    let file = std::fs::File::create(path).map_err(|e| err(path, e))?;
    let encoder = image::codecs::png::PngEncoder::new_with_quality(
        std::io::BufWriter::new(file),
        image::codecs::png::CompressionType::Best,
        image::codecs::png::FilterType::Adaptive,
    );
    image::ImageEncoder::write_image(encoder, &buf, w, h, image::ExtendedColorType::Rgb8).map_err(|e| err(path, e))
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    panel: &Panel,
) -> Result<(), Box<dyn std::error::Error>>
where
    DB::ErrorType: 'static,
{
    let cap = |y: f64| panel.y_max.map_or(y, |m| y.min(m));
    let bands: Vec<Vec<(f64, f64, f64, f64)>> = panel
        .bands
        .iter()
        .map(|b| b.points.iter().map(|&(x, m, lo, hi)| (x, cap(m), cap(lo), cap(hi))).collect())
        .collect();
    let pts = || bands.iter().flat_map(|b| b.iter());
    let (mut x0, mut x1) = (f64::INFINITY, f64::NEG_INFINITY);
    let (mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY);
    for &(x, _, lo, hi) in pts() {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(lo), y1.max(hi));
    }
    if !x0.is_finite() {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 - x0 < 1e-9 {
        (x0, x1) = (x0 - 0.5, x1 + 0.5);
    }
    if y1 - y0 < 1e-9 {
        (y0, y1) = (y0 - 0.5, y1 + 0.5);
    }
    let (xpad, ypad) = (if panel.x_log { 0.05 * (x1 - x0) } else { 0.0 }, 0.05 * (y1 - y0));
    let caption = match panel.y_max {
        Some(m) if pts().any(|p| p.3 >= m) => format!("{} (clipped at {})", panel.title, axis_label(m)),
        _ => panel.title.clone(),
    };
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 17))
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d((x0 - xpad)..(x1 + xpad), (y0 - ypad)..(y1 + ypad))?;
    let (x_log, y_log) = (panel.x_log, panel.y_log);
    let fmt_x = move |v: &f64| if x_log { axis_label(10f64.powf(*v)) } else { format!("{v:.0}") };
    let fmt_y = move |v: &f64| axis_label(if y_log { 10f64.powf(*v) } else { *v });
    chart
        .configure_mesh()
        .x_desc(panel.x_desc.as_str())
        .x_label_formatter(&fmt_x)
        .y_label_formatter(&fmt_y)
        .label_style(("sans-serif", 12))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;
    for (band, points) in panel.bands.iter().zip(&bands) {
        let color = COLORS[band.color % COLORS.len()];
        let mut outline: Vec<(f64, f64)> = points.iter().map(|p| (p.0, p.3)).collect();
        outline.extend(points.iter().rev().map(|p| (p.0, p.2)));
        if points.len() > 1 {
            chart.draw_series(std::iter::once(Polygon::new(outline, color.mix(0.18).filled())))?;
        }
        let line: Vec<(f64, f64)> = points.iter().map(|p| (p.0, p.1)).collect();
        chart
            .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))?
            .label(band.label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        if band.markers {
            chart.draw_series(line.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
            // A single seed's range is a point; several seeds' range is a vertical bar.
            chart.draw_series(
                points.iter().map(|p| PathElement::new(vec![(p.0, p.2), (p.0, p.3)], color.stroke_width(1))),
            )?;
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .label_font(("sans-serif", 11))
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    Ok(())
}

/// plotters draws text with fonts registered by name; DejaVu Sans ships inside the binary.
fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    });
}
