//! `--plot FILE.png`: per-cycle throughput and the latency percentile curve
//! of one run, like node-busmq's benchmark chart.
//!
//! Text goes through plotters' `ab_glyph` renderer with a TrueType font read
//! at run time (`$BUSMQ_BENCH_FONT`, else DejaVu Sans or Liberation Sans
//! where Debian installs them). Without a font the chart is drawn without
//! text: a missing font never fails a benchmark.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;

use crate::report::{Report, thousands};

/// Where a sans-serif TrueType font is looked for when
/// `$BUSMQ_BENCH_FONT` is not set.
const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

const FONT_FAMILY: &str = "sans-serif";
const WIDTH: u32 = 1200;
const HEIGHT: u32 = 900;

/// Registers the first readable font once per process; false when none is
/// usable, and charts are then drawn without text.
fn font_registered() -> bool {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    *REGISTERED.get_or_init(|| {
        let candidates: Vec<PathBuf> = match std::env::var_os("BUSMQ_BENCH_FONT") {
            Some(path) => vec![PathBuf::from(path)],
            None => FONT_CANDIDATES.iter().map(PathBuf::from).collect(),
        };
        for path in candidates {
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            // plotters keeps fonts for the life of the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, bytes).is_ok() {
                return true;
            }
        }
        false
    })
}

/// Draws `report` to the PNG at `path`, titled `title`. Returns whether the
/// chart has text (a font was found).
pub fn write_png(path: &Path, title: &str, report: &Report) -> anyhow::Result<bool> {
    let text = font_registered();
    draw(path, title, report, text)
        .map_err(|e| anyhow::anyhow!("drawing {}: {e}", path.display()))?;
    Ok(text)
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

fn draw(path: &Path, title: &str, report: &Report, text: bool) -> DrawResult {
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = if text {
        let size = title_size(&root, title);
        root.titled(title, (FONT_FAMILY, size))?
    } else {
        root
    };
    let (upper, lower) = root.split_vertically(root.dim_in_pixel().1 / 2);
    throughput(&upper, report, text)?;
    latency(&lower, report, text)?;
    root.present()?;
    Ok(())
}

/// The title's font size: 13 px, or smaller until the whole line fits
/// the chart's width (a run's description is long), but never below 7.
fn title_size(area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>, title: &str) -> u32 {
    let room = area.dim_in_pixel().0.saturating_sub(2 * TITLE_MARGIN);
    (7..=13)
        .rev()
        .find(|&size| {
            area.estimate_text_size(title, &(FONT_FAMILY, size).into_text_style(area))
                .is_ok_and(|(width, _)| width <= room)
        })
        .unwrap_or(7)
}

/// Pixels kept free on each side of the title.
const TITLE_MARGIN: u32 = 8;

/// Pushed/s and consumed/s per cycle, over the run's seconds.
fn throughput(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    report: &Report,
    text: bool,
) -> DrawResult {
    let cycle = report.cycle_secs.max(f64::MIN_POSITIVE);
    let end = report.cycles.len() as f64 * cycle;
    let top = report
        .cycles
        .iter()
        .map(|c| c.pushed_per_sec.max(c.consumed_per_sec))
        .max()
        .unwrap_or(0)
        .max(1) as f64
        * 1.15;
    let mut builder = ChartBuilder::on(area);
    builder.margin(15).margin_right(40);
    if text {
        builder
            .caption("throughput per cycle", (FONT_FAMILY, 18))
            .x_label_area_size(45)
            .y_label_area_size(100);
    }
    let mut chart = builder.build_cartesian_2d(0f64..end.max(cycle), 0f64..top)?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("seconds since start")
            .y_desc("messages/s")
            .y_label_formatter(&|v| thousands(*v as u64))
            .label_style((FONT_FAMILY, 14));
    }
    mesh.draw()?;
    // Each cycle's rate at the end of that cycle.
    let points = |f: fn(&crate::report::Cycle) -> u64| -> Vec<(f64, f64)> {
        report
            .cycles
            .iter()
            .map(|c| (c.index as f64 * cycle, f(c) as f64))
            .collect()
    };
    let pushed = BLUE.stroke_width(2);
    let consumed = RED.stroke_width(2);
    let series = chart.draw_series(LineSeries::new(points(|c| c.pushed_per_sec), pushed))?;
    if text {
        series
            .label("pushed/s")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], pushed));
    }
    let series = chart.draw_series(LineSeries::new(points(|c| c.consumed_per_sec), consumed))?;
    if text {
        series
            .label("consumed/s")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], consumed));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .label_font((FONT_FAMILY, 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
    }
    Ok(())
}

/// Latency by percentile: x is "nines" (0 = 0%, 1 = 90%, 2 = 99%, 3 =
/// 99.9%), the way HdrHistogram plots are read.
fn latency(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    report: &Report,
    text: bool,
) -> DrawResult {
    let curve: Vec<(f64, f64)> = report
        .latency
        .curve
        .iter()
        .map(|p| (nines(p.percentile), p.micros / 1000.0))
        .collect();
    let right = curve.iter().map(|p| p.0).fold(1.0, f64::max);
    let top = curve.iter().map(|p| p.1).fold(0.001, f64::max) * 1.15;
    let mut builder = ChartBuilder::on(area);
    builder.margin(15).margin_right(40);
    if text {
        builder
            .caption(
                format!(
                    "push->delivery latency by percentile ({} samples)",
                    thousands(report.latency.samples)
                ),
                (FONT_FAMILY, 18),
            )
            .x_label_area_size(45)
            .y_label_area_size(100);
    }
    let mut chart = builder.build_cartesian_2d(0f64..right, 0f64..top)?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("percentile")
            .y_desc("milliseconds")
            .x_labels(right.ceil() as usize + 1)
            .x_label_formatter(&|x| percentile_label(*x))
            .y_label_formatter(&|v| format!("{v:.3}"))
            .label_style((FONT_FAMILY, 14));
    }
    mesh.draw()?;
    chart.draw_series(LineSeries::new(curve, RGBColor(0, 128, 0).stroke_width(2)))?;
    Ok(())
}

/// Percentile (0–100) to "nines": 90 -> 1, 99 -> 2, 99.9 -> 3.
fn nines(percentile: f64) -> f64 {
    let rest = (1.0 - percentile / 100.0).max(1e-6);
    -rest.log10()
}

/// The axis label at `nines`: 0 -> "0%", 1 -> "90%", 3 -> "99.9%".
fn percentile_label(nines: f64) -> String {
    let percentile = 100.0 * (1.0 - 10f64.powf(-nines));
    let digits = (nines.round() as usize).saturating_sub(2);
    format!("{percentile:.digits$}%")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Cycle, Latency};

    fn report() -> Report {
        let mut h = crate::workload::latency_histogram();
        for i in 1..=10_000u64 {
            h.record(i * 100).expect("in range");
        }
        Report {
            cycle_secs: 2.0,
            cycles: (1..=5)
                .map(|index| Cycle {
                    index,
                    pushed_per_sec: 1_000_000 + u64::from(index) * 10_000,
                    consumed_per_sec: 990_000,
                    backlog: 2_000,
                })
                .collect(),
            pushed: 10_000_000,
            consumed: 9_900_000,
            backlog_at_end: 100,
            drained: true,
            latency: Latency::from_histogram(&h),
        }
    }

    fn assert_png(path: &Path) {
        let bytes = std::fs::read(path).expect("png written");
        assert!(bytes.len() > 1000, "png of {} bytes", bytes.len());
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    }

    #[test]
    fn writes_a_png() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bench.png");
        write_png(&path, "busmq bench: test", &report()).expect("plot");
        assert_png(&path);
    }

    #[test]
    fn a_long_title_is_shrunk_to_fit_the_width() {
        if !font_registered() {
            eprintln!("no TrueType font on this machine: nothing to measure");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("title.png");
        let area = BitMapBackend::new(&path, (WIDTH, HEIGHT)).into_drawing_area();
        let short = "busmq bench: test";
        assert_eq!(title_size(&area, short), 13, "a short title keeps its size");
        let long = "busmq bench: in-process broker, storage memory; mode unreliable, \
                    4 producers, 4 consumers, 100 queues, 32 B messages, batch 64, \
                    in flight 8/queue and 200/producer, rate max, backlog <= 2000/queue, \
                    10s in 2s cycles";
        let size = title_size(&area, long);
        assert!(size < 13, "the long title was not shrunk");
        let (width, _) = area
            .estimate_text_size(long, &(FONT_FAMILY, size).into_text_style(&area))
            .expect("measure");
        assert!(
            width <= WIDTH - 2 * TITLE_MARGIN,
            "{width} px at {size} px does not fit"
        );
    }

    #[test]
    fn draws_without_text() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bench.png");
        draw(&path, "unused", &report(), false).expect("plot without text");
        assert_png(&path);
    }

    #[test]
    fn percentile_axis() {
        assert!(nines(0.0).abs() < 1e-9);
        assert!((nines(99.0) - 2.0).abs() < 1e-9);
        assert_eq!(percentile_label(0.0), "0%");
        assert_eq!(percentile_label(1.0), "90%");
        assert_eq!(percentile_label(3.0), "99.9%");
    }
}
