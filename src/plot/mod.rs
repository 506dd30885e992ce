//! PNG figures with `plotters`: training curves from `metrics.jsonl`, and heatmaps (attention
//! weights, positional encodings). Text is set in DejaVu Sans, embedded so that plots look the
//! same on machines without fonts.

use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::ranged1d::{SegmentValue, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use crate::run::MetricsLine;

mod report;
pub use report::write_report;

const FONT: &str = "sans-serif";

#[derive(Debug, thiserror::Error)]
#[error("{path}: cannot draw the plot: {reason}")]
pub struct PlotError {
    path: PathBuf,
    reason: String,
}

fn plot_error(path: &Path) -> impl Fn(String) -> PlotError + '_ {
    move |reason| PlotError { path: path.to_path_buf(), reason }
}

/// Registers the embedded font once per process; plotters looks fonts up by family name.
fn register_font() {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // The bytes are a font known to parse, so this cannot fail at run time.
        let _ = plotters::style::register_font(
            FONT,
            FontStyle::Normal,
            include_bytes!("DejaVuSans.ttf"),
        );
    });
}

/// One run's logged metrics, labelled for a legend.
pub struct Curves {
    pub label: String,
    pub metrics: Vec<MetricsLine>,
}

/// One series of a line chart.
struct Series {
    label: String,
    points: Vec<(f64, f64)>,
    color: RGBAColor,
    /// Validation points are few and matter most: thick, with dots.
    emphasis: bool,
}

/// matplotlib's first colours ("tab10"), one per run.
const COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// `loss.png` (train and validation loss against step) and `lr.png` (learning rate against
/// step) in `out_dir`. Several runs are overlaid, one colour each, train lines pale; a single
/// run gets one colour for train and another for validation. `log_y` puts loss on a log scale.
pub fn training_curves(
    runs: &[Curves],
    log_y: bool,
    out_dir: &Path,
) -> Result<Vec<PathBuf>, PlotError> {
    let several = runs.len() > 1;
    let name = |run: &Curves, what: &str| {
        if several {
            format!("{} {what}", run.label)
        } else {
            what.to_string()
        }
    };
    let points =
        |run: &Curves, split: &str, value: fn(&MetricsLine) -> Option<f64>| -> Vec<(f64, f64)> {
            run.metrics
                .iter()
                .filter(|l| l.split == split)
                .filter_map(|l| Some((l.step as f64, value(l)?)))
                .collect()
        };
    let mut loss = Vec::new();
    let mut lr = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let (train, val) = if several {
            (colour.to_rgba(), colour.to_rgba())
        } else {
            (COLOURS[0].to_rgba(), COLOURS[1].to_rgba())
        };
        let raw = points(run, "train", |l| Some(l.loss));
        // The per-step loss is noisy: drawn pale, with its moving average on top.
        loss.push(Series {
            label: String::new(),
            points: raw.clone(),
            color: train.mix(0.2),
            emphasis: false,
        });
        loss.push(Series {
            label: name(run, "train (smoothed)"),
            points: smoothed(&raw),
            color: train.mix(if several { 0.6 } else { 0.9 }),
            emphasis: false,
        });
        loss.push(Series {
            label: name(run, "val"),
            points: points(run, "val", |l| Some(l.loss)),
            color: val,
            emphasis: true,
        });
        let label = if several { run.label.clone() } else { "learning rate".into() };
        lr.push(Series {
            label,
            points: points(run, "train", |l| l.lr),
            color: colour.to_rgba(),
            emphasis: false,
        });
    }
    let names: Vec<&str> = runs.iter().map(|r| r.label.as_str()).collect();
    let names = names.join(" vs ");
    let loss_path = out_dir.join("loss.png");
    let y_desc = if log_y { "loss (log scale)" } else { "loss" };
    let title = format!("Loss: {names}");
    line_chart(&loss_path, &title, y_desc, |v| format!("{v:.2}"), &loss, log_y)?;
    let lr_path = out_dir.join("lr.png");
    let title = format!("Learning rate: {names}");
    line_chart(&lr_path, &title, "learning rate", |v| format!("{v:.1e}"), &lr, false)?;
    Ok(vec![loss_path, lr_path])
}

/// An exponential moving average of `points`, debiased at the start (as TensorBoard's
/// smoothing), over about 2% of the curve.
pub fn smoothed(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let weight = 1.0 - 1.0 / (points.len() as f64 / 50.0).clamp(1.0, 50.0);
    let (mut average, mut scale) = (0.0, 0.0);
    let finite = points.iter().filter(|(_, y)| y.is_finite());
    finite
        .map(|&(x, y)| {
            average = weight * average + (1.0 - weight) * y;
            scale = weight * scale + (1.0 - weight);
            (x, average / scale)
        })
        .collect()
}

/// `y_format` writes the tick labels of the y axis.
fn line_chart(
    path: &Path,
    title: &str,
    y_desc: &str,
    y_format: fn(&f64) -> String,
    series: &[Series],
    log_y: bool,
) -> Result<(), PlotError> {
    let err = plot_error(path);
    let all = series.iter().flat_map(|s| s.points.iter());
    let (mut x_max, mut y_min, mut y_max) = (1.0f64, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in all.filter(|(_, y)| y.is_finite() && (!log_y || *y > 0.0)) {
        x_max = x_max.max(x);
        y_min = y_min.min(y);
        y_max = y_max.max(y);
    }
    if !y_min.is_finite() {
        return Err(err("no metrics to plot (is metrics.jsonl empty?)".into()));
    }
    let pad = ((y_max - y_min) * 0.05).max(y_max.abs() * 1e-3).max(1e-12);
    register_font();
    let root = BitMapBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let mut builder = ChartBuilder::on(&root);
    builder.caption(title, (FONT, 26)).margin(16).x_label_area_size(48).y_label_area_size(80);
    let drawn = if log_y {
        let y_range = (y_min * 0.95..y_max * 1.05).log_scale();
        let chart = builder.build_cartesian_2d(0f64..x_max, y_range);
        draw_chart(chart.map_err(|e| err(e.to_string()))?, y_desc, y_format, series, log_y)
    } else {
        let chart = builder.build_cartesian_2d(0f64..x_max, y_min - pad..y_max + pad);
        draw_chart(chart.map_err(|e| err(e.to_string()))?, y_desc, y_format, series, log_y)
    };
    drawn.map_err(&err)?;
    root.present().map_err(|e| err(e.to_string()))
}

/// The axes with their labels, then the lines.
fn draw_chart<'a, Y>(
    mut chart: ChartContext<'a, BitMapBackend<'a>, Cartesian2d<RangedCoordf64, Y>>,
    y_desc: &str,
    y_format: fn(&f64) -> String,
    series: &[Series],
    log_y: bool,
) -> Result<(), String>
where
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let mut mesh = chart.configure_mesh();
    mesh.x_desc("step")
        .y_desc(y_desc)
        .label_style((FONT, 15))
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&y_format);
    mesh.draw().map_err(|e| e.to_string())?;
    draw_lines(&mut chart, series, log_y)
}

fn draw_lines<'a, X, Y>(
    chart: &mut ChartContext<'a, BitMapBackend<'a>, Cartesian2d<X, Y>>,
    series: &[Series],
    log_y: bool,
) -> Result<(), String>
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    for s in series.iter().filter(|s| !s.points.is_empty()) {
        let points =
            s.points.iter().copied().filter(|(_, y)| y.is_finite() && (!log_y || *y > 0.0));
        let color = s.color;
        let width = if s.emphasis { 3 } else { 1 };
        let drawn = chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(width)))
            .map_err(|e| e.to_string())?;
        if !s.label.is_empty() {
            drawn.label(s.label.clone()).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(width))
            });
        }
        if s.emphasis {
            chart
                .draw_series(points.map(|p| Circle::new(p, 4, color.filled())))
                .map_err(|e| e.to_string())?;
        }
    }
    chart
        .configure_series_labels()
        .label_font((FONT, 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| e.to_string())
}

/// A matrix to draw as a heatmap: `values[row][column]`, row 0 at the top.
pub struct Heatmap {
    pub title: String,
    pub values: Vec<Vec<f32>>,
    pub x_labels: Vec<String>,
    pub y_labels: Vec<String>,
    pub x_desc: String,
    pub y_desc: String,
}

/// Draws `maps` in a grid of `columns` panels sharing one colour scale, with a colour bar.
pub fn heatmaps(
    path: &Path,
    title: &str,
    maps: &[Heatmap],
    columns: usize,
) -> Result<(), PlotError> {
    let err = plot_error(path);
    let values = maps.iter().flat_map(|m| m.values.iter().flatten()).copied();
    let (lo, hi) =
        values.fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if !lo.is_finite() || !hi.is_finite() {
        return Err(err("nothing to draw (empty or non-finite values)".into()));
    }
    let hi = if hi > lo { hi } else { lo + 1.0 };
    let columns = columns.clamp(1, maps.len().max(1));
    let rows = maps.len().div_ceil(columns);
    let cells = maps.first().map_or(1, |m| m.x_labels.len().max(m.y_labels.len()));
    let panel = (cells as u32 * 22).clamp(360, 900);
    let size = (panel * columns as u32 + 110, panel * rows as u32 + 50);
    register_font();
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let root = root.titled(title, (FONT, 24)).map_err(|e| err(e.to_string()))?;
    let (grid, bar) = root.split_horizontally(size.0 - 110);
    for (area, map) in grid.split_evenly((rows, columns)).iter().zip(maps) {
        heatmap_panel(area, map, lo, hi).map_err(&err)?;
    }
    colour_bar(&bar, lo, hi).map_err(&err)?;
    root.present().map_err(|e| err(e.to_string()))
}

fn viridis(v: f32, lo: f32, hi: f32) -> RGBColor {
    ViridisRGB::get_color_normalized(v, lo, hi)
}

fn heatmap_panel(
    area: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
    map: &Heatmap,
    lo: f32,
    hi: f32,
) -> Result<(), String> {
    let (rows, cols) = (map.values.len(), map.values.first().map_or(0, Vec::len));
    let label_size = |labels: &[String]| {
        labels.iter().map(|l| l.chars().count()).max().unwrap_or(1).clamp(2, 12) as u32 * 8 + 30
    };
    let mut chart = ChartBuilder::on(area)
        .caption(&map.title, (FONT, 18))
        .margin(8)
        .x_label_area_size(label_size(&map.x_labels))
        .y_label_area_size(label_size(&map.y_labels))
        .build_cartesian_2d((0..cols).into_segmented(), (0..rows).into_segmented())
        .map_err(|e| e.to_string())?;
    let label = |labels: &[String], v: &SegmentValue<usize>, flip: bool| match v {
        SegmentValue::CenterOf(i) if *i < labels.len() => {
            labels[if flip { labels.len() - 1 - i } else { *i }].clone()
        }
        _ => String::new(),
    };
    let font_size = if cols.max(rows) > 40 { 10 } else { 13 };
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(cols)
        .y_labels(rows)
        .x_desc(&map.x_desc)
        .y_desc(&map.y_desc)
        .x_label_style((FONT, font_size).into_font().transform(FontTransform::Rotate90))
        .y_label_style((FONT, font_size))
        .axis_desc_style((FONT, 14))
        .x_label_formatter(&|v| label(&map.x_labels, v, false))
        .y_label_formatter(&|v| label(&map.y_labels, v, true))
        .draw()
        .map_err(|e| e.to_string())?;
    let cell = |c: usize, r: usize| {
        // Row 0 is drawn at the top: the y axis grows upwards.
        let y = rows - 1 - r;
        let corner = |c, y| (SegmentValue::Exact(c), SegmentValue::Exact(y));
        Rectangle::new(
            [corner(c, y), corner(c + 1, y + 1)],
            viridis(map.values[r][c], lo, hi).filled(),
        )
    };
    chart
        .draw_series(
            (0..rows).flat_map(|r| (0..cols).map(move |c| (c, r))).map(|(c, r)| cell(c, r)),
        )
        .map_err(|e| e.to_string())?;
    Ok(())
}

fn colour_bar(
    area: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
    lo: f32,
    hi: f32,
) -> Result<(), String> {
    let mut chart = ChartBuilder::on(area)
        .margin_top(40)
        .margin_bottom(60)
        .margin_right(10)
        .y_label_area_size(60)
        .build_cartesian_2d(0f32..1f32, lo..hi)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .y_labels(6)
        .y_label_style((FONT, 13))
        .y_label_formatter(&|v| format!("{v:.2}"))
        .draw()
        .map_err(|e| e.to_string())?;
    let steps = 100;
    let band = (hi - lo) / steps as f32;
    chart
        .draw_series((0..steps).map(|i| {
            let v = lo + band * i as f32;
            Rectangle::new([(0.0, v), (1.0, v + band)], viridis(v + band / 2.0, lo, hi).filled())
        }))
        .map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::smoothed;

    #[test]
    fn smoothing_keeps_a_constant_and_damps_noise() {
        let flat: Vec<(f64, f64)> = (0..500).map(|i| (i as f64, 2.0)).collect();
        assert!(smoothed(&flat).iter().all(|&(_, y)| (y - 2.0).abs() < 1e-9));
        let noisy: Vec<(f64, f64)> =
            (0..1000).map(|i| (i as f64, if i % 2 == 0 { 1.0 } else { 3.0 })).collect();
        let tail = &smoothed(&noisy)[500..];
        assert!(tail.iter().all(|&(_, y)| (y - 2.0).abs() < 0.2), "{:?}", &tail[..4]);
        assert_eq!(smoothed(&noisy).len(), noisy.len());
    }
}
