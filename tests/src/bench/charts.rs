//! SVG charts of the figures a run has, drawn with plotters (its SVG backend only).
//!
//! plotters is built without its `ttf` feature: text is laid out with its own size
//! estimate and written as SVG `<text>` (the viewer's sans-serif font draws it), so
//! drawing reads no font file and the output depends only on the data.
//!
//! The report writes every chart into `<out>/images/bench-*.svg` and links them from
//! `results.md` as `images/bench-*.svg`; `cargo xtask bench` copies them into
//! `docs/images/` when it refreshes `docs/benchmarks.md`, so the same links work there.

use std::fmt::Write as _;
use std::ops::Range;
use std::path::Path;

use anyhow::{Context, Result, ensure};
use plotters::coord::Shift;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::env::Route;
use super::floor::FloorFigure;
use super::policy::{self, PolicyFigure, Table};
use super::report::Report;

/// Where the charts go, under the output directory (and under `docs/`).
pub const IMAGES_DIR: &str = "images";
const SIZE: (u32, u32) = (1000, 520);
const FONT: &str = "sans-serif";
/// Line and bar colours, in order (strong enough on white).
const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

fn color(i: usize) -> RGBColor {
    COLORS[i % COLORS.len()]
}

/// A named series of (x, y) points.
pub type Line = (String, Vec<(f64, f64)>);

/// The axes of a line chart.
#[derive(Debug, Clone)]
pub struct Axes {
    pub x_label: String,
    pub y_label: String,
    pub log_x: bool,
    pub log_y: bool,
}

/// What a chart draws.
#[derive(Debug, Clone)]
pub enum Plot {
    Lines {
        axes: Axes,
        series: Vec<Line>,
    },
    /// One group of bars per category, one bar per series in each group.
    Bars {
        y_label: String,
        groups: Vec<String>,
        series: Vec<(String, Vec<f64>)>,
    },
}

#[derive(Debug, Clone)]
pub struct Chart {
    /// File name under [`IMAGES_DIR`].
    pub file: &'static str,
    pub title: String,
    pub plot: Plot,
}

impl Chart {
    /// Writes the chart as SVG to `path`.
    pub fn draw(&self, path: &Path) -> Result<()> {
        match &self.plot {
            Plot::Lines { axes, series } => line_chart_axes(path, &self.title, axes, series),
            Plot::Bars {
                y_label,
                groups,
                series,
            } => bar_chart(path, &self.title, y_label, groups, series),
        }
    }
}

/// A line chart with a linear y axis (`log_x`: logarithmic x axis).
pub fn line_chart<S: AsRef<str>>(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    log_x: bool,
    series: &[(S, Vec<(f64, f64)>)],
) -> Result<()> {
    let axes = Axes {
        x_label: x_label.to_owned(),
        y_label: y_label.to_owned(),
        log_x,
        log_y: false,
    };
    line_chart_axes(path, title, &axes, series)
}

/// A line chart with either axis linear or logarithmic. Points that cannot be drawn
/// (not finite, or not positive on a logarithmic axis) are left out; a chart without any
/// point is an error.
pub fn line_chart_axes<S: AsRef<str>>(
    path: &Path,
    title: &str,
    axes: &Axes,
    series: &[(S, Vec<(f64, f64)>)],
) -> Result<()> {
    let drawable = |v: f64, log: bool| v.is_finite() && (!log || v > 0.0);
    let clean: Vec<(&str, Vec<(f64, f64)>)> = series
        .iter()
        .map(|(name, points)| {
            let kept = points
                .iter()
                .copied()
                .filter(|&(x, y)| drawable(x, axes.log_x) && drawable(y, axes.log_y))
                .collect();
            (name.as_ref(), kept)
        })
        .collect();
    let xs = clean.iter().flat_map(|(_, p)| p.iter().map(|q| q.0));
    let ys = clean.iter().flat_map(|(_, p)| p.iter().map(|q| q.1));
    let (x, y) = (span(xs, axes.log_x, false), span(ys, axes.log_y, true));
    let (Some(x), Some(y)) = (x, y) else {
        anyhow::bail!("chart {title:?} has no point to draw");
    };
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let names: Vec<&str> = clean.iter().map(|(name, _)| *name).collect();
    let plot = canvas(&root, title, &names, Mark::Line)?;
    let lines = |root| LinesSpec {
        root,
        axes,
        series: &clean,
    };
    match (axes.log_x, axes.log_y) {
        (false, false) => lines(&plot).draw(x, y)?,
        (true, false) => lines(&plot).draw(x.log_scale(), y)?,
        (false, true) => lines(&plot).draw(x, y.log_scale())?,
        (true, true) => lines(&plot).draw(x.log_scale(), y.log_scale())?,
    }
    root.present()
        .with_context(|| format!("writing {}", path.display()))
}

/// The axis range of `values`: whole decades on a logarithmic axis; on a linear one a little
/// room either side, from 0 when `from_zero` and nothing is negative. `None`: no value.
fn span(values: impl Iterator<Item = f64>, log: bool, from_zero: bool) -> Option<Range<f64>> {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if lo > hi {
        return None;
    }
    if log {
        // Whole decades, a little wider so that both end decades get their label.
        let lo = 10f64.powf(lo.log10().floor());
        let hi = 10f64.powf(hi.log10().ceil()).max(lo * 10.0);
        return Some(lo * 0.8..hi * 1.25);
    }
    let pad = if hi > lo {
        (hi - lo) * 0.08
    } else {
        hi.abs().max(1.0) * 0.1
    };
    let lo = if from_zero && lo >= 0.0 {
        0.0
    } else {
        lo - pad
    };
    Some(lo..hi + pad)
}

/// How the legend shows a series.
#[derive(Clone, Copy)]
enum Mark {
    Line,
    Bar,
}

/// Draws the title on top and the legend (series `i` in [`color`]`(i)`) down the right
/// side of `root`, and returns the area left for the plot: the legend never covers data.
fn canvas<'a>(
    root: &DrawingArea<SVGBackend<'a>, Shift>,
    title: &str,
    names: &[&str],
    mark: Mark,
) -> Result<DrawingArea<SVGBackend<'a>, Shift>> {
    let titled = root.titled(title, (FONT, 20))?;
    let longest = names.iter().map(|n| n.chars().count()).max().unwrap_or(0);
    let width = (longest * 6 + 48).clamp(110, 320);
    let (plot, side) = titled.split_horizontally(SIZE.0 as i32 - width as i32);
    let label = TextStyle::from((FONT, 13)).pos(Pos::new(HPos::Left, VPos::Center));
    for (i, name) in names.iter().enumerate() {
        let (c, y) = (color(i), 32 + 22 * i as i32);
        match mark {
            Mark::Line => side.draw(&PathElement::new(vec![(8, y), (32, y)], c.stroke_width(2)))?,
            Mark::Bar => side.draw(&Rectangle::new([(12, y - 6), (28, y + 6)], c.filled()))?,
        }
        side.draw(&Text::new(name.to_string(), (40, y), label.clone()))?;
    }
    Ok(plot)
}

/// A line chart about to be drawn on `root`.
struct LinesSpec<'a, 'b> {
    root: &'a DrawingArea<SVGBackend<'b>, Shift>,
    axes: &'a Axes,
    series: &'a [(&'a str, Vec<(f64, f64)>)],
}

impl LinesSpec<'_, '_> {
    fn draw<X, Y>(self, x: X, y: Y) -> Result<()>
    where
        X: AsRangedCoord<Value = f64>,
        Y: AsRangedCoord<Value = f64>,
        X::CoordDescType: ValueFormatter<f64>,
        Y::CoordDescType: ValueFormatter<f64>,
    {
        let mut chart = ChartBuilder::on(self.root)
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(72)
            .build_cartesian_2d(x, y)?;
        chart
            .configure_mesh()
            .x_desc(self.axes.x_label.as_str())
            .y_desc(self.axes.y_label.as_str())
            .x_label_formatter(&|v| tick(*v))
            .y_label_formatter(&|v| tick(*v))
            .draw()?;
        for (i, (_, points)) in self.series.iter().enumerate() {
            let color = color(i);
            let line = LineSeries::new(points.iter().copied(), color.stroke_width(2));
            chart.draw_series(line)?;
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
        }
        Ok(())
    }
}

/// Groups of bars: `series[k].1[i]` is the bar of series `k` in group `i` (NaN: none).
pub fn bar_chart<S: AsRef<str>>(
    path: &Path,
    title: &str,
    y_label: &str,
    groups: &[String],
    series: &[(S, Vec<f64>)],
) -> Result<()> {
    let values = series.iter().flat_map(|(_, v)| v.iter().copied());
    let top = values.filter(|v| v.is_finite()).fold(f64::NAN, f64::max);
    ensure!(
        !groups.is_empty() && top.is_finite(),
        "chart {title:?} has no bar to draw"
    );
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let names: Vec<&str> = series.iter().map(|(name, _)| name.as_ref()).collect();
    let plot = canvas(&root, title, &names, Mark::Bar)?;
    // Group i is centred on x = i: with at most one label per group, the axis puts its
    // labels on the integers, which name the groups.
    let n = groups.len();
    let mut chart = ChartBuilder::on(&plot)
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(-0.5..n as f64 - 0.5, 0.0..top.max(0.0) * 1.25)?;
    let name_at = |v: &f64| {
        let i = v.round();
        let named = (v - i).abs() < 1e-6 && i >= 0.0;
        named
            .then(|| groups.get(i as usize).cloned())
            .flatten()
            .unwrap_or_default()
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .y_desc(y_label)
        .x_label_formatter(&name_at)
        .y_label_formatter(&|v| tick(*v))
        .draw()?;
    let width = 0.8 / series.len().max(1) as f64;
    for (k, (_, values)) in series.iter().enumerate() {
        chart.draw_series(bars(values, k, width))?;
    }
    root.present()
        .with_context(|| format!("writing {}", path.display()))
}

/// The bars of series `k` (each `width` wide, group `i` centred on x = `i`).
fn bars(values: &[f64], k: usize, width: f64) -> Vec<Rectangle<(f64, f64)>> {
    let left = |i: usize| i as f64 - 0.4 + k as f64 * width;
    let style = color(k).filled();
    values
        .iter()
        .enumerate()
        .filter(|(_, v)| v.is_finite())
        .map(|(i, &v)| Rectangle::new([(left(i), 0.0), (left(i) + width, v)], style))
        .collect()
}

/// An axis label: `1.5k`, `65.5k`, `100k`, `2M`, `0.25`, `0.0012`.
pub fn tick(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{}M", short(v / 1e6))
    } else if a >= 1e3 {
        format!("{}k", short(v / 1e3))
    } else {
        short(v)
    }
}

/// Three significant digits at most, without trailing zeros.
fn short(v: f64) -> String {
    let a = v.abs();
    let decimals = if a == 0.0 || a >= 100.0 {
        0
    } else {
        (2.0 - a.log10().floor()).max(0.0) as usize
    };
    let text = format!("{v:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    }
}

/// sshgw's RSS against the number of sessions, one line per series of (sessions, MiB).
pub fn rss_chart(series: Vec<Line>) -> Chart {
    Chart {
        file: "bench-rss.svg",
        title: "sshgw RSS against sessions".to_owned(),
        plot: Plot::Lines {
            axes: Axes {
                x_label: "sessions".to_owned(),
                y_label: "RSS (MiB)".to_owned(),
                log_x: false,
                log_y: false,
            },
            series,
        },
    }
}

/// The (sessions, RSS MiB) series of a report: the concurrency figure's sshgw ramp.
pub fn rss_series(r: &Report) -> Vec<Line> {
    let mut series = Vec::new();
    if let Some(ramp) = r.concurrency.as_ref().and_then(|c| c.last(Route::Sshgw)) {
        let points = ramp
            .memory
            .iter()
            .map(|m| (m.sessions as f64, m.rss_mib))
            .collect();
        series.push(("concurrency: idle ssh -tt sessions".to_owned(), points));
    }
    if let Some(scale) = &r.scale {
        let base = (0.0, scale.baseline.rss_mib);
        let points = std::iter::once(base)
            .chain(scale.levels.iter().map(|l| (l.sessions as f64, l.rss_mib)))
            .collect();
        series.push(("scale: idle russh pty sessions".to_owned(), points));
    }
    series
}

/// sshgw's CPU per GiB against the aws-lc-rs and OpenSSL floors, per direction and route.
pub fn cpu_chart(f: &FloorFigure) -> Option<Chart> {
    if f.ratios.is_empty() {
        return None;
    }
    let groups = f
        .ratios
        .iter()
        .map(|r| {
            let route = if r.route == Route::Sshgw {
                ""
            } else {
                ", logging"
            };
            format!("{}{route}", r.direction.label())
        })
        .collect();
    let column = |v: fn(&super::floor::FloorRatio) -> f64| f.ratios.iter().map(v).collect();
    let series = vec![
        ("sshgw".to_owned(), column(|r| r.sshgw_s_per_gib)),
        ("aws-lc-rs floor".to_owned(), column(|r| r.crates_s_per_gib)),
        ("OpenSSL floor".to_owned(), column(|r| r.openssl_s_per_gib)),
    ];
    Some(Chart {
        file: "bench-cpu-floor.svg",
        title: "sshgw CPU per GiB against the crypto floor".to_owned(),
        plot: Plot::Bars {
            y_label: "CPU seconds per GiB".to_owned(),
            groups,
            series,
        },
    })
}

/// Decision time against the number of devices, one line per policy count, and the
/// baseline measured beside each size.
pub fn decision_chart(f: &PolicyFigure) -> Option<Chart> {
    if f.cells.is_empty() {
        return None;
    }
    let mut series: Vec<Line> = f
        .accepted(Table::Policies)
        .into_iter()
        .map(|p| {
            let points = f.cells.iter().filter(|c| c.policies == p);
            let points = points.map(|c| (c.devices as f64, c.ns)).collect();
            (format!("{p} policies"), points)
        })
        .collect();
    let baseline = f
        .accepted(Table::Devices)
        .into_iter()
        .map(|d| (d as f64, policy::baseline_at(f, d)))
        .collect();
    let (bd, bp) = f.baseline;
    series.push((
        format!("baseline {bd} × {bp}, measured beside each"),
        baseline,
    ));
    Some(Chart {
        file: "bench-policy-decision.svg",
        title: "Policy decision time against devices and policies".to_owned(),
        plot: Plot::Lines {
            axes: Axes {
                x_label: "devices".to_owned(),
                y_label: "decision (ns, median of chunk means)".to_owned(),
                log_x: true,
                log_y: true,
            },
            series,
        },
    })
}

/// Push time against the table size, with the read-back floor.
pub fn push_chart(f: &PolicyFigure) -> Option<Chart> {
    let mut series = Vec::new();
    for table in Table::ALL {
        let accepted: Vec<_> = f
            .accepted(table)
            .into_iter()
            .filter_map(|n| f.push(table, n))
            .collect();
        let points = |v: fn(&policy::PushSize) -> f64| {
            accepted
                .iter()
                .map(|p| (p.entries as f64, v(p)))
                .collect::<Vec<_>>()
        };
        let label = table.label();
        series.push((format!("{label}: push"), points(|p| p.push_s.median)));
        series.push((
            format!("{label}: read-back"),
            points(|p| p.read_back_s.median),
        ));
    }
    if series.iter().all(|(_, p)| p.is_empty()) {
        return None;
    }
    Some(Chart {
        file: "bench-push.svg",
        title: "Push time against table size".to_owned(),
        plot: Plot::Lines {
            axes: Axes {
                x_label: "entries".to_owned(),
                y_label: "seconds (median)".to_owned(),
                log_x: true,
                log_y: true,
            },
            series,
        },
    })
}

/// The charts `r` has data for.
pub fn of_report(r: &Report) -> Vec<Chart> {
    let mut charts = Vec::new();
    let rss = rss_series(r);
    if rss.iter().any(|(_, p)| !p.is_empty()) {
        charts.push(rss_chart(rss));
    }
    charts.extend(r.floor.as_ref().and_then(cpu_chart));
    if let Some(p) = &r.policy {
        charts.extend(decision_chart(p));
        charts.extend(push_chart(p));
    }
    charts
}

/// Writes `charts` into `<dir>/images/`, removing the charts of an earlier run first (a
/// full run's `cargo xtask bench` copies whatever is there into `docs/images/`).
pub fn write(charts: &[Chart], dir: &Path) -> Result<()> {
    let images = dir.join(IMAGES_DIR);
    remove_old_charts(&images)?;
    if charts.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(&images).with_context(|| format!("creating {}", images.display()))?;
    for chart in charts {
        let path = images.join(chart.file);
        chart
            .draw(&path)
            .with_context(|| format!("drawing {}", path.display()))?;
    }
    Ok(())
}

/// Removes the `bench-*.svg` files in `images` (a missing directory has none).
fn remove_old_charts(images: &Path) -> Result<()> {
    let entries = match std::fs::read_dir(images) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", images.display())),
    };
    for entry in entries {
        let path = entry
            .with_context(|| format!("reading {}", images.display()))?
            .path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("bench-") && name.ends_with(".svg") {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}

/// Links to `charts` (relative: `images/…`).
pub fn markdown(charts: &[Chart], md: &mut String) {
    if charts.is_empty() {
        return;
    }
    md.push_str("\n**Charts**\n");
    for c in charts {
        let _ = write!(md, "\n![{}]({IMAGES_DIR}/{})\n", c.title, c.file);
    }
}
