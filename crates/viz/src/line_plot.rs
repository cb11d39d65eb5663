//! Line plots of training curves (`loss.png`): named series against epoch, optionally
//! on a logarithmic y axis, with legend and axis labels.
//!
//! Every value must be finite (a NaN loss is an error naming the series and epoch, not
//! a silently broken line). On a log axis, points with y ≤ 0 cannot be placed: they are
//! left out and the legend entry says how many; a series with no positive value is an
//! error. Lines join the remaining points in the order given.

use std::ops::Range;
use std::path::Path;

use image::RgbImage;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::{
    BLACK, BindKeyPoints, ChartBuilder, Circle, IntoLogRange, LineSeries, PathElement, RGBColor,
    SeriesLabelPosition, WHITE,
};
use plotters::style::Color as _;

use crate::canvas::{Area, Canvas, DrawError, write_png};
use crate::error::{Result, VizError};
use crate::font::{bold, text};
use crate::panel::tick_label;

/// Size of every line plot, px.
pub const LINE_PLOT_SIZE: (u32, u32) = (900, 560);

/// Series with at most this many points also get a marker at each point.
const MAX_MARKED_POINTS: usize = 60;

/// One named curve: `(x, y)` points, e.g. (epoch, loss).
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    name: String,
    points: Vec<(f64, f64)>,
}

impl Series {
    /// A series of `points`; it must have at least one point and only finite values.
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Result<Self> {
        let name = name.into();
        if points.is_empty() {
            return Err(VizError::EmptySeries {
                name,
                reason: "it has no points".to_string(),
            });
        }
        if let Some((k, &(x, y))) = points
            .iter()
            .enumerate()
            .find(|(_, (x, y))| !x.is_finite() || !y.is_finite())
        {
            return Err(VizError::NonFinite {
                name,
                index: vec![k],
                value: if x.is_finite() { y } else { x },
            });
        }
        Ok(Self { name, points })
    }

    /// A series of one value per epoch, epochs counted from 1.
    pub fn per_epoch(name: impl Into<String>, values: &[f64]) -> Result<Self> {
        let points = values
            .iter()
            .enumerate()
            .map(|(k, &v)| ((k + 1) as f64, v))
            .collect();
        Self::new(name, points)
    }
}

/// A series as drawn: its points (positive ones only on a log axis) and legend text.
struct Drawn {
    label: String,
    points: Vec<(f64, f64)>,
    color: RGBColor,
}

/// A line plot of one or more series; see the module documentation for the rules.
#[derive(Debug, Clone, PartialEq)]
pub struct LinePlot {
    title: String,
    x_label: String,
    y_label: String,
    log_y: bool,
    series: Vec<Series>,
}

impl LinePlot {
    /// An empty plot with a title and axis labels (units included, e.g. "loss [-]").
    pub fn new(
        title: impl Into<String>,
        x_label: impl Into<String>,
        y_label: impl Into<String>,
    ) -> Self {
        Self {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            log_y: false,
            series: Vec::new(),
        }
    }

    /// Switches the y axis to a logarithmic scale.
    pub fn log_y(mut self, log_y: bool) -> Self {
        self.log_y = log_y;
        self
    }

    /// Adds a series; colours follow matplotlib's default cycle in the order added.
    pub fn with_series(mut self, series: Series) -> Self {
        self.series.push(series);
        self
    }

    /// Renders the plot, [`LINE_PLOT_SIZE`] pixels.
    pub fn render(&self) -> Result<RgbImage> {
        let drawn = self.drawn()?;
        let all = || drawn.iter().flat_map(|d| d.points.iter());
        let x = padded(all().map(|p| p.0), false);
        let y = padded(all().map(|p| p.1), self.log_y);
        let mut canvas = Canvas::new(LINE_PLOT_SIZE.0, LINE_PLOT_SIZE.1);
        canvas.draw("line plot", |root| {
            if self.log_y {
                let (major, minor) = log_ticks(y.start, y.end);
                let y = y
                    .clone()
                    .log_scale()
                    .with_key_points(major)
                    .with_light_points(minor);
                self.chart(root, &drawn, x.clone(), y, &|v| significant(*v))
            } else {
                let span = y.end - y.start;
                self.chart(root, &drawn, x.clone(), y.clone(), &|v| {
                    tick_label(*v, span)
                })
            }
        })?;
        Ok(canvas.into_image())
    }

    /// Renders the plot and writes it as PNG to `path`, atomically.
    pub fn write_png(&self, path: &Path) -> Result<()> {
        write_png(&self.render()?, path)
    }

    /// The series as they will be drawn, with log-axis omissions applied.
    fn drawn(&self) -> Result<Vec<Drawn>> {
        if self.series.is_empty() {
            return Err(VizError::invalid(
                &self.title,
                "a line plot needs at least one series",
            ));
        }
        self.series
            .iter()
            .enumerate()
            .map(|(k, s)| {
                let c = colorous::CATEGORY10[k % colorous::CATEGORY10.len()];
                let color = RGBColor(c.r, c.g, c.b);
                if !self.log_y {
                    return Ok(Drawn {
                        label: s.name.clone(),
                        points: s.points.clone(),
                        color,
                    });
                }
                let points: Vec<_> = s.points.iter().copied().filter(|p| p.1 > 0.0).collect();
                let omitted = s.points.len() - points.len();
                if points.is_empty() {
                    return Err(VizError::EmptySeries {
                        name: s.name.clone(),
                        reason: "no positive value to show on a log axis".to_string(),
                    });
                }
                let label = match omitted {
                    0 => s.name.clone(),
                    1 => format!("{} (1 value ≤ 0 not shown)", s.name),
                    n => format!("{} ({n} values ≤ 0 not shown)", s.name),
                };
                Ok(Drawn {
                    label,
                    points,
                    color,
                })
            })
            .collect()
    }

    /// Draws axes, series and legend with y coordinates `y`.
    fn chart<Y>(
        &self,
        root: &Area,
        drawn: &[Drawn],
        x: Range<f64>,
        y: Y,
        y_format: &dyn Fn(&f64) -> String,
    ) -> std::result::Result<(), DrawError>
    where
        Y: AsRangedCoord<Value = f64>,
        Y::CoordDescType: ValueFormatter<f64>,
    {
        root.fill(&WHITE)?;
        let x_span = x.end - x.start;
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, bold(20, BLACK))
            .margin(18)
            .x_label_area_size(48)
            .y_label_area_size(84)
            .build_cartesian_2d(x, y)?;
        chart
            .configure_mesh()
            .x_desc(&self.x_label)
            .y_desc(&self.y_label)
            .label_style(text(13, BLACK))
            .axis_desc_style(text(15, BLACK))
            .bold_line_style(BLACK.mix(0.12))
            .light_line_style(BLACK.mix(0.04))
            .x_label_formatter(&|v| tick_label(*v, x_span))
            .y_label_formatter(y_format)
            .draw()?;
        for d in drawn {
            let color = d.color;
            chart
                .draw_series(LineSeries::new(
                    d.points.iter().copied(),
                    color.stroke_width(2),
                ))?
                .label(d.label.as_str())
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 24, y)], color.stroke_width(2))
                });
            if d.points.len() <= MAX_MARKED_POINTS {
                chart.draw_series(d.points.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK.mix(0.5))
            .label_font(text(13, BLACK))
            .draw()
    }
}

/// The range of `values` widened by 5 % each side (a factor on a log axis), or by a
/// fixed amount around a single value, so no point sits on the frame.
fn padded(values: impl Iterator<Item = f64>, log: bool) -> Range<f64> {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if log {
        let pad = if hi > lo { (hi / lo).powf(0.05) } else { 2.0 };
        lo / pad..hi * pad
    } else {
        let pad = if hi > lo {
            0.05 * (hi - lo)
        } else {
            0.5 * lo.abs().max(1.0)
        };
        lo - pad..hi + pad
    }
}

/// Labelled and grid-only tick values of a log axis over `[lo, hi]` (`0 < lo < hi`):
/// 1-2-5 per decade up to four decades, then powers of ten thinned to about ten labels;
/// grid lines at every 1..9 multiple while that stays readable.
fn log_ticks(lo: f64, hi: f64) -> (Vec<f64>, Vec<f64>) {
    let decades = (hi / lo).log10();
    let (first, last) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
    let step = ((decades / 10.0).ceil() as usize).max(1);
    // Relative slack so a tick exactly at an end survives the rounding of powi.
    let within = |v: &f64| *v >= lo * (1.0 - 1e-9) && *v <= hi * (1.0 + 1e-9);
    let over = |mantissas: &'static [f64], step: usize| {
        (first..=last)
            .step_by(step)
            .flat_map(move |e| mantissas.iter().map(move |m| m * 10f64.powi(e)))
            .filter(within)
            .collect::<Vec<f64>>()
    };
    const ALL: &[f64] = &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0];
    let major = if decades <= 1.0 {
        over(ALL, 1)
    } else if decades <= 4.0 {
        over(&[1.0, 2.0, 5.0], 1)
    } else {
        over(&[1.0], step)
    };
    let minor = if decades <= 6.0 {
        over(ALL, 1)
    } else {
        Vec::new()
    };
    (major, minor)
}

/// `v` with three significant digits and no trailing zeros, in exponent form outside
/// [1e-3, 1e5): 0.0125 → "0.0125", 2e-5 → "2e-5".
fn significant(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let exponent = v.abs().log10().floor() as i32;
    let trim = |s: String| {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    };
    if (-3..5).contains(&exponent) {
        let decimals = (2 - exponent).max(0) as usize;
        trim(format!("{v:.decimals$}"))
    } else {
        let s = format!("{v:.2e}");
        let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
        format!("{}e{exp}", trim(mantissa.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn color_of(k: usize) -> [u8; 3] {
        let c = colorous::CATEGORY10[k];
        [c.r, c.g, c.b]
    }

    /// Lowest pixel row of colour `rgb` in each column that has any (the legend's sample
    /// line sits above the curve, so it does not disturb this).
    fn trace(img: &RgbImage, rgb: [u8; 3]) -> Vec<(f64, f64)> {
        (0..img.width())
            .filter_map(|x| {
                (0..img.height())
                    .rev()
                    .find(|&y| img.get_pixel(x, y).0 == rgb)
                    .map(|y| (f64::from(x), f64::from(y)))
            })
            .collect()
    }

    /// Largest distance of `trace` from the straight line through its ends, px.
    fn bend(trace: &[(f64, f64)]) -> f64 {
        let (a, b) = (trace[0], trace[trace.len() - 1]);
        trace
            .iter()
            .map(|&(x, y)| (y - (a.1 + (b.1 - a.1) * (x - a.0) / (b.0 - a.0))).abs())
            .fold(0.0, f64::max)
    }

    fn exponential() -> Series {
        // 100 points of 10^(−3t): a straight line on a log axis, strongly bent on a linear one.
        let points = (0..100).map(|k| {
            let t = f64::from(k) / 99.0;
            (1.0 + 99.0 * t, 10f64.powf(-3.0 * t))
        });
        Series::new("train", points.collect()).unwrap()
    }

    #[test]
    fn log_axis_straightens_an_exponential() {
        let plot = LinePlot::new("loss", "epoch", "loss [-]").with_series(exponential());
        let img = plot.clone().log_y(true).render().unwrap();
        let log_trace = trace(&img, color_of(0));
        assert!(
            log_trace.len() > 500,
            "the line spans the plot: {}",
            log_trace.len()
        );
        assert!(bend(&log_trace) < 3.0, "{}", bend(&log_trace));
        let linear = trace(&plot.render().unwrap(), color_of(0));
        assert!(bend(&linear) > 100.0, "{}", bend(&linear));
    }

    #[test]
    fn writes_a_png_with_every_series_in_its_colour() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loss.png");
        LinePlot::new("VAE stage 1", "epoch", "loss [-]")
            .with_series(Series::per_epoch("train", &[0.7, 0.4, 0.2, 0.1]).unwrap())
            .with_series(Series::per_epoch("val", &[0.3, 0.2, 0.15, 0.12]).unwrap())
            .write_png(&path)
            .unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), LINE_PLOT_SIZE);
        for k in 0..2 {
            let n = img.pixels().filter(|p| p.0 == color_of(k)).count();
            assert!(n > 200, "series {k} has {n} pixels");
        }
    }

    #[test]
    fn log_axis_skips_non_positive_values_and_refuses_series_without_any() {
        let mixed = Series::per_epoch("val", &[0.5, 0.0, -1.0, 0.1]).unwrap();
        let plot = LinePlot::new("loss", "epoch", "loss").log_y(true);
        let drawn = plot.clone().with_series(mixed).drawn().unwrap();
        assert_eq!(drawn[0].points, vec![(1.0, 0.5), (4.0, 0.1)]);
        assert!(
            drawn[0].label.contains("2 values ≤ 0 not shown"),
            "{}",
            drawn[0].label
        );

        let never = Series::per_epoch("kl", &[0.0, -0.1]).unwrap();
        let err = plot.with_series(never).render().unwrap_err();
        assert!(matches!(err, VizError::EmptySeries { .. }), "{err}");
        assert!(err.to_string().contains("kl"));
    }

    #[test]
    fn bad_series_and_plots_are_errors() {
        assert!(matches!(
            Series::new("train", vec![]),
            Err(VizError::EmptySeries { .. })
        ));
        match Series::per_epoch("train", &[0.5, f64::NAN]) {
            Err(VizError::NonFinite { name, index, .. }) => {
                assert_eq!((name.as_str(), index), ("train", vec![1]));
            }
            other => panic!("{other:?}"),
        }
        assert!(LinePlot::new("loss", "epoch", "loss").render().is_err());
        let one = Series::per_epoch("train", &[1.0]).unwrap();
        let err = LinePlot::new("loss", "epoch", "loss")
            .with_series(one)
            .write_png(Path::new("/nonexistent-dir/loss.png"))
            .unwrap_err();
        assert!(matches!(err, VizError::Io { .. }), "{err}");
    }

    #[test]
    fn single_point_series_still_render() {
        let one = Series::per_epoch("train", &[0.25]).unwrap();
        for log in [false, true] {
            let plot = LinePlot::new("loss", "epoch", "loss").with_series(one.clone());
            assert_eq!(
                plot.log_y(log).render().unwrap().dimensions(),
                LINE_PLOT_SIZE
            );
        }
    }

    #[test]
    fn log_ticks_cover_every_decade_of_the_range() {
        let (major, minor) = log_ticks(0.017, 0.87);
        let shown: Vec<String> = major.iter().map(|&v| significant(v)).collect();
        assert_eq!(shown, ["0.02", "0.05", "0.1", "0.2", "0.5"]);
        assert_eq!(minor.len(), 8 + 8, "0.02..0.09 and 0.1..0.8");
        let (major, _) = log_ticks(0.2, 0.85);
        assert_eq!(major.len(), 7, "0.2 to 0.8 in steps of 0.1");
        let (major, minor) = log_ticks(1e-30, 1.0);
        assert_eq!(major.len(), 11, "every third power of ten: {major:?}");
        assert!(minor.is_empty());
    }

    #[test]
    fn significant_labels() {
        assert_eq!(significant(0.0125), "0.0125");
        assert_eq!(significant(1.0), "1");
        assert_eq!(significant(2e-5), "2e-5");
        assert_eq!(significant(123456.0), "1.23e5");
        assert_eq!(significant(0.1), "0.1");
        assert_eq!(significant(250.0), "250");
    }
}
